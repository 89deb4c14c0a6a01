"""The `mullama extract` config (kept free of heavy imports so that `--help` is instant)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mullama.config import at_least, device_name, either, greater_than, one_of, option, path_given, simple_name
from mullama.errors import MullamaError

# The option naming each registered encoder kind's folder, and what its store holds. Written by name here so
# that `--help` imports no encoder; tests/test_encoder_kinds.py keeps it equal to the registry's options.
ENCODER_OPTIONS = {"mert": "audio", "vit": "images", "vivit": "videos"}


@dataclass
class ExtractConfig:
    input: str = option(help="Folder of audio, images or videos (recursive), manifest (.csv/.jsonl with clip_id, "
                             "path) or MusicQA .json", argument=True, check=path_given)
    store: str = option(help="Feature store path or URL (created if absent)", check=path_given)
    mert: str = option("", help="MERT folder (hub layout or HubertModel layout): an audio store")
    vit: str = option("", help="ViT folder (transformers ViTModel): an image store, instead of --mert")
    vivit: str = option("", help="ViViT folder (transformers VivitModel): a video store, instead of --mert")
    audio_root: str = option("", help="Folder holding the audio of a MusicQA .json input (default: its folder)")
    window_seconds: float = option(60.0, help="Audio window length; each window gets its own stack",
                                   check=greater_than(0))
    min_window_seconds: float = option(10.0, help="Drop a trailing window shorter than this (first window always kept)",
                                       check=at_least(0))
    batch_size: int = option(8, help="Windows per encoder call (only equal-length windows are batched)",
                             check=at_least(1))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    precision: str = option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16",
                            check=one_of("auto", "fp32", "bf16"))
    workers: int = option(max(1, min(4, (os.cpu_count() or 2) - 1)), help="Decoding processes (0: decode inline)",
                          check=at_least(0))
    partition_size: int = option(256, help="Clips per committed partition (the unit of work and of commit)",
                                 check=at_least(1))
    dtype: str = option("float16", help="Stored dtype: float16 or float32", check=one_of("float16", "float32"))
    retry_failed: bool = option(False, help="Try again clips that failed in an earlier run")
    ray: str = option("", help="Run on Ray: 'local' (start one on this machine), 'auto' (the running cluster) "
                               "or a cluster address; empty runs in this process")
    actors: int = option(0, help="Ray: encoder replicas (0: one per GPU, else 2)", check=at_least(0))
    actor_gpus: float = option(-1.0, help="Ray: GPUs per actor, fractions allowed (-1: 1 if the cluster has GPUs)",
                               check=either(one_of(-1.0), at_least(0)))
    actor_cpus: float = option(-1.0, help="Ray: CPUs per actor (-1: cluster CPUs / actors; sets torch threads)",
                               check=either(one_of(-1.0), greater_than(0)))
    decode_threads: int = option(2, help="Ray: decoding threads inside each actor", check=at_least(1))
    max_retries: int = option(3, help="Ray: attempts per partition after a lost actor or node", check=at_least(0))
    index: str = option("", help="Then build or update the store's similar-track index of this name (e.g. default), "
                               "on Ray too with --ray", check=either(one_of(""), simple_name))
    progress: bool = option(True, help="Show a progress bar")

    def encoder_folder(self) -> tuple[str, str]:
        """(option, folder) of the one encoder folder given: --mert, --vit or --vivit."""
        given = [(name, getattr(self, name)) for name in ENCODER_OPTIONS if getattr(self, name)]
        if len(given) != 1:
            named = ", ".join(f"--{name}" for name, _ in given) or "none"
            *first, last = [f"--{name} ({holds})" for name, holds in ENCODER_OPTIONS.items()]
            raise MullamaError(f"give exactly one encoder folder: {', '.join(first)} or {last}; got {named}")
        return given[0]
