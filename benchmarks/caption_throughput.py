"""Captioning a collection from the store, measured side by side in one run.

  demo model   `mullama caption` over the demo store's 64 clips with the demo's trained adapter and mini
               LLaMA (run `mullama demo --out DEMO` first), one clip at a time against batches of 8 and 16;
               captions/s and new tokens/s (captions re-tokenized), greedy and the published sampling
  7B shapes    (--llama-7b FOLDER, from `mullama models init-llama FOLDER --size 7b`) a random bf16 adapter
               for 25 x 1024 stacks, one batch of 8 answers on CPU in bf16: peak RSS and new tokens/s

    python benchmarks/caption_throughput.py --demo demo-run [--llama-7b /tmp/llama-7b] [--work /tmp/cap-bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from mullama.config import build_config
from mullama.encoder_identity import EncoderIdentity
from mullama.model.music_llama import MusicLlama
from mullama.serve.caption import run_caption
from mullama.serve.config import CaptionConfig


def demo_model(demo: Path, work: Path, batches: list[int], max_new_tokens: int) -> dict:
    adapter, llama = demo / "train" / "stage2" / "adapter", demo / "llama-mini-text"
    tokenizer = AutoTokenizer.from_pretrained(str(llama))
    results = {}
    for mode, temperature in (("greedy", 0.0), ("sampled", 0.6)):
        rates = {}
        for batch in batches:
            out = work / f"captions-{mode}-b{batch}.jsonl"
            report = run_caption(build_config(CaptionConfig, {
                "store": str(demo / "store"), "adapter": str(adapter), "llama": str(llama), "out": str(out),
                "temperature": temperature, "max_new_tokens": max_new_tokens, "batch_size": batch, "device": "cpu",
                "progress": False, "overwrite": True}))
            captions = [json.loads(line)["caption"] for line in out.read_text().splitlines()]
            tokens = sum(len(tokenizer.encode(c, add_special_tokens=False)) for c in captions)
            rates[batch] = {"captions_per_s": round(report.captioned_now / report.seconds, 2),
                            "tokens_per_s": round(tokens / report.seconds, 1),
                            "mean_caption_tokens": round(tokens / len(captions), 1)}
        one = rates[batches[0]]["captions_per_s"]
        for batch in batches:
            rates[batch]["ratio"] = round(rates[batch]["captions_per_s"] / one, 2)
        results[mode] = rates
    return results


def seven_b(llama: Path, batch: int, tokens: int) -> dict:
    encoder = EncoderIdentity("mert-330m-shapes", "c" * 64, "w" * 64, 24000, 25, 1024)
    started = time.perf_counter()
    model = MusicLlama.create(llama, encoder, dtype="bf16", adapter_dtype="bf16", device="cpu")
    loaded = time.perf_counter() - started
    stacks = np.random.default_rng(0).normal(size=(batch, 25, 1024)).astype(np.float32)
    model.answer_batch(stacks[:1], ["Describe the audio"], temperature=0.0, max_new_tokens=1)  # page weights in
    started = time.perf_counter()
    model.answer_batch(stacks, ["Describe the audio in detail"] * batch, temperature=0.0, max_new_tokens=tokens)
    seconds = time.perf_counter() - started
    return {"batch": batch, "new_tokens_each": tokens, "load_s": round(loaded, 1), "generate_s": round(seconds, 1),
            "tokens_per_s": round(batch * tokens / seconds, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, help="Folder of a finished `mullama demo` run")
    parser.add_argument("--work", default="/tmp/caption-bench")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--llama-7b", default="", help="A 7B-shaped LLaMA folder (skipped when not given)")
    parser.add_argument("--tokens-7b", type=int, default=8)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    result = {"demo_model": demo_model(Path(args.demo), work, [1, 8, 16], args.max_new_tokens)}
    if args.llama_7b:
        result["llama_7b_cpu_bf16"] = seven_b(Path(args.llama_7b), 8, args.tokens_7b)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
