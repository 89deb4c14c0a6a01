"""QA generation with a local model: batched prompts against one at a time, measured side by side.

The demo's text-pretrained mini LLaMA (run `mullama demo --out DEMO` first) answers the description request
for PROMPTS clips of the demo corpus through `LocalBackend` (transformers generate, sampled at 0.5, exactly
--max-new-tokens each): one prompt per generate() call against batches of 8 and 16. Reported: prompts/s, new
tokens/s, and the ratio. (The mini LLaMA follows no instructions, so its outputs fail validation; speed is what
is measured here.) Then a projection for MusicCaps + MagnaTagATune on one GPU with a 7B model.

    python benchmarks/qa_throughput.py --demo demo-run [--prompts 32] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mullama.data.qagen.backends import LocalBackend
from mullama.data.qagen.instructions import description_prompt
from mullama.data.qagen.sources import read_source

# Projection inputs (docs/data-formats.md; the published MusicQA): clips per source, tokens per clip.
CLIPS = {"MusicCaps": 5_521, "MagnaTagATune": 25_863}
TOKENS_PER_CLIP = 2 * 300  # two requests of ~300 new tokens (four answers, or five question-answer pairs)
PUBLISHED_V100_DAYS = 8  # per source dataset


def measure(backend: LocalBackend, prompts: list[str], batch: int) -> dict:
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), batch):
        outputs = backend.complete(prompts[start:start + batch], 0.5, start)
        tokens += sum(len(backend.tokenizer.encode(text, add_special_tokens=False)) for text in outputs)
    seconds = time.perf_counter() - started
    return {"prompts_per_s": round(len(prompts) / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "seconds": round(seconds, 1)}


def projection(tokens_per_s: float) -> dict:
    return {name: {"gpu_hours": round(clips * TOKENS_PER_CLIP / tokens_per_s / 3600, 1),
                   "published_gpu_hours": PUBLISHED_V100_DAYS * 24} for name, clips in CLIPS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", required=True, type=Path)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gpu-tokens-per-s", type=float, default=2000.0,
                        help="assumed aggregate decoding rate of a 7B model on one GPU, batched (for the projection)")
    args = parser.parse_args()
    clips = read_source(args.demo / "corpus")[:args.prompts]
    prompts = [description_prompt(clip) for clip in clips]
    backend = LocalBackend(str(args.demo / "llama-mini-text"), args.max_new_tokens, device="cpu")
    # Every output runs to --max-new-tokens: an instruct model's answers are long and alike in length (~300
    # tokens), while the mini LLaMA stops at random after a few tokens and would measure only its EOS luck.
    backend.model.generation_config.min_new_tokens = args.max_new_tokens
    backend.complete(prompts[:2], 0.5, 0)  # warm-up
    rates = {batch: measure(backend, prompts, batch) for batch in (1, 8, 16)}
    for batch in rates:
        rates[batch]["ratio"] = round(rates[batch]["prompts_per_s"] / rates[1]["prompts_per_s"], 2)
    print(json.dumps({"cpu_threads": torch.get_num_threads(), "prompts": len(prompts), "batches": rates}))
    print(json.dumps({"assumed_gpu_tokens_per_s": args.gpu_tokens_per_s, "projection": projection(
        args.gpu_tokens_per_s)}))


if __name__ == "__main__":
    main()
