"""Music generation cost, side by side in one run: compute per second of audio and memory, for each stage.

Random weights at the published shapes (MusicGen small or medium; the projector at LLaMA-2-7B's width and
MusicGen's 768-wide, 128-row conditioning; tiny shapes for a quick look):
  projector        8 hidden states of width 4096 -> 128 x 768 conditioning rows (the only trained part)
  MusicGen         conditioning rows -> codes -> EnCodec audio, with classifier-free guidance (the published
                   default: the batch runs twice), per second of audio
  melody           the same through MusicGen-Melody, following a recording's chroma (editing)
  targets          a caption through T5 once, the cost `mullama generator targets` pays per caption instead of
                   every training step
Memory: resident set size after each model is built (the process's, so each line includes the ones before).

    python benchmarks/generation.py --size small --seconds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from mullama.fixtures.musicgen import write_random_musicgen
from mullama.music.head import OutputConfig, OutputHead
from mullama.music.musicgen import MusicGenDecoder


def rss_gib() -> float:
    return psutil.Process().memory_info().rss / 2**30


def timed(action, repeats: int) -> float:
    """Best of `repeats` wall times (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--seconds", type=float, default=4.0, help="audio generated per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=4096, help="LLM width feeding the projector (LLaMA-2-7B)")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, object] = {"size": args.size, "seconds_of_audio": args.seconds, "device": "cpu",
                                  "threads": torch.get_num_threads(), "rss_start_gib": rss_gib()}
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        plain = MusicGenDecoder.load(write_random_musicgen(Path(scratch) / "mg", args.size), device="cpu")
        results["rss_after_musicgen_gib"] = rss_gib()
        width = plain.space.width
        head = OutputHead(OutputConfig(d_model=args.d_model, width=width)).eval()
        results["projector_parameters_m"] = sum(p.numel() for p in head.parameters()) / 1e6
        results["rss_after_projector_gib"] = rss_gib()
        hidden = torch.randn(1, 8, args.d_model)
        results["projector_s"] = timed(lambda: head(hidden), args.repeats)
        rows, _ = plain.text_conditioning(["a calm piano melody with soft strings"], 128)
        results["t5_caption_s"] = timed(lambda: plain.text_conditioning(["a calm piano melody"], 128), args.repeats)
        for name, guidance in (("musicgen_cfg", 3.0), ("musicgen_no_cfg", 1.0)):
            seconds = timed(lambda: plain.generate(rows, args.seconds, guidance=guidance, seed=0),  # noqa: B023
                            args.repeats)
            results[f"{name}_s"] = seconds
            results[f"{name}_s_per_audio_s"] = seconds / args.seconds
        plain = None  # freed before the Melody model loads
        melody = MusicGenDecoder.load(write_random_musicgen(Path(scratch) / "melody", args.size, melody=True),
                                   device="cpu")
        results["rss_after_melody_gib"] = rss_gib()
        recording = np.sin(2 * np.pi * 440 * np.arange(int(args.seconds * 32000)) / 32000).astype(np.float32)
        seconds = timed(lambda: melody.generate(rows, args.seconds, seed=0, melody=[recording], melody_rate=32000),
                        args.repeats)
        results["melody_cfg_s_per_audio_s"] = seconds / args.seconds
    for key, value in results.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
