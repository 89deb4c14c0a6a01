"""Stage-1 extraction speed, measured side by side in one run on the same clips.

Rates compared (clips per second over the same audio):
  model only      pre-decoded windows through MertEncoder.encode in batches (the ceiling)
  end to end      `run_local` from the files: decode workers + encoder + store writes
  published       the MU-LLaMA recipe: one clip at a time, batch size 1, fp32, eager attention
                  (as MERT's remote code ran), every hidden state's frames returned to the host
                  and stacked before pooling
and the store's write and read rates with MERT-330M-shaped stacks.

    python benchmarks/extract_throughput.py --size 95m --clips 8 --seconds 30 [--bf16]
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

from mullama.encoder_identity import EncoderIdentity
from mullama.extract.config import ExtractConfig
from mullama.extract.mert import MertEncoder
from mullama.extract.runner import run_local
from mullama.fixtures.mert import write_random_mert
from mullama.store import ClipResult, FeatureStore, StoreSettings


def make_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """Stereo 44.1 kHz FLAC files: decoding and resampling cost what real files cost."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for number in range(count):
        t = np.arange(int(seconds * 44100)) / 44100
        wave = sum(np.sin(2 * np.pi * rng.uniform(80, 800) * k * t) / k for k in (1, 2, 3)) * 0.2
        audio = np.stack([wave, wave * 0.9], axis=1) + 0.01 * rng.standard_normal((len(t), 2))
        path = folder / f"clip{number:03d}.flac"
        sf.write(str(path), audio.astype(np.float32), 44100)
        paths.append(path)
    return paths


def published_rate(mert: Path, paths: list[Path]) -> float:
    """One clip at a time, bs 1, fp32, eager attention, all frames to the host, then the mean."""
    encoder = MertEncoder.load(mert, device="cpu", precision="fp32")
    model = encoder.model
    model.set_attn_implementation("eager")
    processor = encoder.feature_extractor
    started = time.perf_counter()
    for path in paths:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = soxr.resample(samples.mean(axis=1), rate, 24000)
        inputs = processor(audio, sampling_rate=24000, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        frames = torch.stack(out.hidden_states).squeeze(1).cpu().numpy()  # (L+1, T, H) on the host
        frames.mean(axis=1)
    return len(paths) / (time.perf_counter() - started)


def model_only_rate(encoder: MertEncoder, paths: list[Path], batch_size: int) -> float:
    windows = []
    for path in paths:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        windows.append(soxr.resample(samples.mean(axis=1), rate, encoder.sample_rate).astype(np.float32))
    started = time.perf_counter()
    for start in range(0, len(windows), batch_size):
        encoder.encode(windows[start:start + batch_size])
    return len(paths) / (time.perf_counter() - started)


def end_to_end_rate(encoder: MertEncoder, folder: Path, store: Path, batch_size: int, workers: int) -> float:
    summary = run_local(ExtractConfig(input=str(folder), mert="(loaded)", store=str(store), batch_size=batch_size,
                                      workers=workers, progress=False), encoder=encoder)
    assert summary.ok == summary.processed and not summary.failures
    return summary.processed / summary.seconds


def store_rates(root: Path, clips: int = 2048, shape: tuple[int, int] = (25, 1024)) -> dict[str, float]:
    identity = EncoderIdentity("bench", "c" * 64, "w" * 64, 24000, *shape)
    store = FeatureStore.create(str(root / "store-bench"), identity, StoreSettings())
    rng = np.random.default_rng(0)
    results = [ClipResult(f"c{n}", "x", window_stacks=rng.standard_normal((1,) + shape).astype(np.float32))
               for n in range(clips)]
    clip_bytes = shape[0] * shape[1] * 2
    started = time.perf_counter()
    for start in range(0, clips, 256):
        store.write_partition(results[start:start + 256])
    write_seconds = time.perf_counter() - started
    reader = FeatureStore.open(str(root / "store-bench"))
    ids = reader.clip_ids()
    picks = rng.choice(len(ids), 300, replace=False)
    started = time.perf_counter()
    for pick in picks:
        reader.get([ids[pick]])
    single = len(picks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(0, 256 * 4, 64):
        reader.get([ids[p] for p in rng.choice(len(ids), 64, replace=False)])
    batched = 256 * 4 / (time.perf_counter() - started)
    started = time.perf_counter()
    total = sum(batch.nbytes for _, batch in reader.iter_batches(256))
    sequential = total / (time.perf_counter() - started)
    return {"write_mb_s": clips * clip_bytes * 2 / write_seconds / 1e6,  # clip + window stacks
            "random_single_clips_s": single, "random_batch64_clips_s": batched,
            "sequential_mb_s": sequential / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="95m", choices=["tiny", "95m", "330m"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="also measure bf16 autocast on the CPU")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        mert = write_random_mert(root / "mert", args.size)
        paths = make_clips(root / "clips", args.clips, args.seconds)
        encoder = MertEncoder.load(mert, device="cpu", precision="fp32")
        encoder.encode([np.zeros(24000, np.float32)])  # warm-up
        results = {"size": args.size, "clips": args.clips, "seconds_per_clip": args.seconds,
                   "batch_size": args.batch_size, "threads": torch.get_num_threads()}
        results["published_clips_s"] = published_rate(mert, paths)
        results["model_only_clips_s"] = model_only_rate(encoder, paths, args.batch_size)
        results["end_to_end_clips_s"] = end_to_end_rate(encoder, root / "clips", root / "store", args.batch_size,
                                                        args.workers)
        if args.bf16:
            fast = MertEncoder.load(mert, device="cpu", precision="bf16")
            fast.encode([np.zeros(24000, np.float32)])
            results["bf16_model_only_clips_s"] = model_only_rate(fast, paths, args.batch_size)
            results["bf16_end_to_end_clips_s"] = end_to_end_rate(fast, root / "clips", root / "store-bf16",
                                                                 args.batch_size, args.workers)
        results["pipeline_efficiency"] = results["end_to_end_clips_s"] / results["model_only_clips_s"]
        results["speedup_vs_published"] = results["end_to_end_clips_s"] / results["published_clips_s"]
        if args.bf16:
            results["bf16_speedup_vs_published"] = results["bf16_end_to_end_clips_s"] / results["published_clips_s"]
        results["store"] = store_rates(root)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
