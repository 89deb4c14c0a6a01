"""AudioLDM2's cost as MuMu-LLaMA's alternative music decoder, side by side in one run: compute per second of
audio, per denoising step and for the published 200 steps, and memory.

Random weights at cvssp/audioldm2's shapes (`--size base`: a 347 M UNet, flan-T5-large, GPT-2 base, CLAP, the
mel VAE and the 16 kHz HiFi-GAN) or tiny ones for a quick look. Generation goes through `AudioLDM2Decoder`,
the path `mullama generate` takes: packed rows in, audio out.
  conditioning   a caption through CLAP, T5, the projection model and GPT-2's 8 rows: what
                 `mullama generator targets` pays once per caption (and generation once, for guidance's null)
  denoising      one UNet step, with guidance (the batch runs twice) and without; measured as the difference
                 between runs of 2N and N steps, so the fixed costs cancel
  fixed          the rest of a call: the VAE's decoding of the mel and the vocoder
Memory: resident set size after the pipeline is built.

    python benchmarks/audioldm2.py --size base --seconds 5 --steps 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psutil
import torch

from mullama.fixtures.audioldm2 import random_audioldm2
from mullama.music.audioldm2 import DEFAULT_STEPS, AudioLDM2Decoder
from mullama.music.space import ConditioningSpace


def rss_gib() -> float:
    return psutil.Process().memory_info().rss / 2**30


def timed(action, repeats: int = 1) -> float:
    """Best of `repeats` wall times (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base", choices=["tiny", "base"])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio generated per call")
    parser.add_argument("--steps", type=int, default=5, help="N: calls of N and 2N denoising steps are timed")
    parser.add_argument("--repeats", type=int, default=2, help="each timing is the best of this many calls")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args()
    results: dict[str, object] = {"size": args.size, "seconds_of_audio": args.seconds, "device": "cpu",
                                  "threads": torch.get_num_threads(), "rss_start_gib": rss_gib()}
    pipeline = random_audioldm2(args.size)
    pipeline.set_progress_bar_config(disable=True)
    results["parameters_m"] = {name: round(sum(p.numel() for p in part.parameters()) / 1e6, 1)
                               for name, part in pipeline.components.items() if isinstance(part, torch.nn.Module)}
    results["rss_after_build_gib"] = rss_gib()
    width = max(pipeline.text_encoder_2.config.d_model, pipeline.language_model.config.n_embd)
    decoder = AudioLDM2Decoder(pipeline, ConditioningSpace(width, "", "", ""))  # no folder: the shapes alone
    with torch.inference_mode():
        decoder.text_conditioning(["warm-up"], 128)
        results["conditioning_per_caption_s"] = timed(
            lambda: decoder.text_conditioning(["a calm piano melody with soft strings"], 128))
        rows, _ = decoder.text_conditioning(["a calm piano melody with soft strings"], 128)
        decoder.generate(rows, args.seconds, steps=1, seed=0)  # warm-up
        for label, guidance in (("guided", 3.5), ("unguided", 1.0)):
            short = timed(lambda: decoder.generate(rows, args.seconds, steps=args.steps, seed=0, guidance=guidance),
                          args.repeats)
            long = timed(lambda: decoder.generate(rows, args.seconds, steps=2 * args.steps, seed=0,
                                                  guidance=guidance), args.repeats)
            step = (long - short) / args.steps
            fixed = short - args.steps * step
            published = (fixed + DEFAULT_STEPS * step) / args.seconds
            results[label] = {"per_step_s": step, "fixed_s": fixed, "per_step_per_audio_second_s": step / args.seconds,
                              f"{DEFAULT_STEPS}_steps_per_audio_second_s": published, "calls_s": [short, long]}
    results["rss_end_gib"] = rss_gib()
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
