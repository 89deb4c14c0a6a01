"""Training from cached features against the published design, measured side by side in one run.

  cached step      the trainer's step: a batch of stacks from the WebDataset shards -> adapter + frozen
                   LLaMA forward/backward -> AdamW
  published step   the same step, preceded (as in the published code) by decoding every example's audio
                   and running MERT on it (batch size 1, fp32, all frames to the host, then the mean)
  loader           batches per second the shard loader produces alone, against the batches per second
                   the trainer consumes (the loader must never be the bottleneck: ratio >= 5)
  padding          share of padded positions, random batches against length-bucketed batches

    python benchmarks/train_throughput.py --clips 24 --mert-size 95m --llama-size mini
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from mullama.extract.config import ExtractConfig
from mullama.extract.mert import MertEncoder
from mullama.extract.runner import run_local
from mullama.fixtures.config import DemoConfig
from mullama.fixtures.corpus import build_demo_corpus
from mullama.fixtures.llama import write_random_llama
from mullama.fixtures.mert import write_random_mert
from mullama.model import MusicLlama
from mullama.model.stage2 import set_trainable
from mullama.store import FeatureStore
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.store.shards import ShardSet
from mullama.train.data import BatchSpec, EpochStream, padding_fraction
from mullama.train.trainer import param_groups


def step(model: MusicLlama, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    output = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         music_prompt=model.model.music_prompt(batch["stacks"]), use_cache=False)
    output.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(output.loss.detach())


def published_stacks(encoder: MertEncoder, paths: list[Path]) -> torch.Tensor:
    """What the published loop does for every example of every step."""
    model, processor = encoder.model, encoder.feature_extractor
    stacks = []
    for path in paths:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = soxr.resample(samples.mean(axis=1), rate, 24000)[: 60 * 24000]
        inputs = processor(audio, sampling_rate=24000, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
        frames = torch.stack(hidden).squeeze(1).cpu()  # (L+1, T, H) on the host
        stacks.append(frames.mean(dim=1))
    return torch.stack(stacks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--mert-size", default="95m")
    parser.add_argument("--llama-size", default="mini")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, float | str] = {"mert": args.mert_size, "llama": args.llama_size, "batch_size": args.batch_size,
                                       "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        corpus = build_demo_corpus(DemoConfig(out=str(root / "corpus"), clips=args.clips, seed=0, long_fraction=0.0))
        mert = write_random_mert(root / "mert", args.mert_size)
        run_local(ExtractConfig(input=str(corpus.manifest), mert=str(mert), store=str(root / "store"), workers=1,
                                progress=False))
        export_shards(ExportShardsConfig(store=str(root / "store"), out=str(root / "shards"),
                                         qa=[str(corpus.qa_train), str(corpus.qa_eval)], progress=False))
        llama = write_random_llama(root / "llama", args.llama_size, corpus=corpus.qa_train)
        shards = ShardSet.open(root / "shards")
        model = MusicLlama.create(llama, shards.encoder, device="cpu")
        optimizer = torch.optim.AdamW(param_groups(set_trainable(model.model, 1), 0.05), lr=1e-4)
        spec = BatchSpec(args.batch_size, 96, model.prompt_format)

        started = time.perf_counter()
        batches = list(EpochStream(shards, model.tokenizer, spec, 0, 0))
        loader_rate = len(batches) / (time.perf_counter() - started)
        step(model, optimizer, batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches[: args.steps]:
            step(model, optimizer, batch)
        cached = (time.perf_counter() - started) / args.steps
        consume_rate = 1.0 / cached

        encoder = MertEncoder.load(mert, device="cpu", precision="fp32")
        encoder.model.set_attn_implementation("eager")  # as MERT's remote code ran
        store = FeatureStore.open(str(root / "store"))
        sources = {r.clip_id: Path(r.source) for r in store.records()}
        clip_ids = store.clip_ids()
        started = time.perf_counter()
        for number, batch in enumerate(batches[: args.steps]):
            picks = [sources[clip_ids[(number * args.batch_size + i) % len(clip_ids)]]
                     for i in range(len(batch["input_ids"]))]
            batch = dict(batch, stacks=published_stacks(encoder, picks))
            step(model, optimizer, batch)
        published = (time.perf_counter() - started) / args.steps

        padding = {}
        for length in (96, 512):
            for bucket in (False, True):
                stream = EpochStream(shards, model.tokenizer, BatchSpec(args.batch_size, length, model.prompt_format,
                                                                        bucket=bucket), 0, 0)
                padding[f"max_length_{length}_{'bucketed' if bucket else 'random'}"] = padding_fraction(stream)
        results.update({
            "clip_seconds_mean": float(np.mean([r.duration for r in store.records()])),
            "cached_step_s": cached, "published_step_s": published, "speedup": published / cached,
            "loader_batches_s": loader_rate, "trainer_batches_s": consume_rate,
            "loader_over_trainer": loader_rate / consume_rate, **padding,
        })
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
