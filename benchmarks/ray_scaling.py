"""Ray extraction against the local runner on this machine, and how the rate scales with actors.

Same clips, same encoder, one run each, side by side:
  local            `run_local` (decode processes + one encoder in this process)
  ray, N actors    `run_ray` on a local Ray cluster started beforehand (what `--ray auto` meets),
                   actors created and their models loaded inside the timed run
The cluster start itself (`ray.init`) is timed apart.

    RAY_AUTH_MODE=disabled python benchmarks/ray_scaling.py --clips 240 --size tiny
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import soundfile as sf

from mullama.extract.config import ExtractConfig
from mullama.extract.ray_runner import run_ray
from mullama.extract.runner import run_local
from mullama.fixtures.mert import write_random_mert
from mullama.raycluster import connect


def make_clips(folder: Path, count: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for number in range(count):
        seconds = rng.choice([5.0, 10.0, 15.0])  # a few lengths, as in real collections: batches form
        t = np.arange(int(seconds * 44100)) / 44100
        wave = np.sin(2 * np.pi * rng.uniform(100, 900) * t) * 0.3 + 0.01 * rng.standard_normal(t.shape)
        sf.write(str(folder / f"clip{number:04d}.flac"), wave.astype(np.float32), 44100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        mert = write_random_mert(root / "mert", args.size)
        make_clips(root / "clips", args.clips, np.random.default_rng(0))
        base = dict(input=str(root / "clips"), mert=str(mert), batch_size=8, partition_size=32, progress=False)
        results: dict[str, float] = {"clips": args.clips, "cpus": os.cpu_count() or 0}
        local = run_local(ExtractConfig(store=str(root / "local"), workers=1, **base))
        results["local_seconds"] = local.seconds
        started = time.perf_counter()
        connect("local")
        results["ray_init_seconds"] = time.perf_counter() - started
        for actors in args.actors:
            summary = run_ray(ExtractConfig(store=str(root / f"ray{actors}"), ray="auto", actors=actors,
                                            actor_cpus=max(0.5, (os.cpu_count() or 2) / actors - 0.5), **base))
            assert summary.ok == args.clips
            results[f"ray_{actors}_actors_seconds"] = summary.seconds
            results[f"ray_{actors}_actors_over_local"] = summary.seconds / local.seconds
        ray.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
