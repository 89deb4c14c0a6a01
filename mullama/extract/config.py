"""The `mullama extract` config (kept free of heavy imports so that `--help` is instant)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mullama.config import option


@dataclass
class ExtractConfig:
    input: str = option(help="Folder of audio (recursive), manifest (.csv/.jsonl with clip_id, path) or MusicQA .json",
                        argument=True)
    mert: str = option(help="MERT folder (hub layout or HubertModel layout)")
    store: str = option(help="Feature store path or URL (created if absent)")
    audio_root: str = option("", help="Folder holding the audio of a MusicQA .json input (default: its folder)")
    window_seconds: float = option(60.0, help="Window length; each window gets its own stack")
    min_window_seconds: float = option(10.0, help="Drop a trailing window shorter than this (first window always kept)")
    batch_size: int = option(8, help="Windows per encoder call (only equal-length windows are batched)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    precision: str = option("auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
    workers: int = option(max(1, min(4, (os.cpu_count() or 2) - 1)), help="Decoding processes (0: decode inline)")
    partition_size: int = option(256, help="Clips per committed partition (the unit of work and of commit)")
    dtype: str = option("float16", help="Stored dtype: float16 or float32")
    retry_failed: bool = option(False, help="Try again clips that failed in an earlier run")
    ray: str = option("", help="Run on Ray: 'local' (start one on this machine), 'auto' (the running cluster) "
                               "or a cluster address; empty runs in this process")
    actors: int = option(0, help="Ray: encoder replicas (0: one per GPU, else 2)")
    actor_gpus: float = option(-1.0, help="Ray: GPUs per actor, fractions allowed (-1: 1 if the cluster has GPUs)")
    actor_cpus: float = option(-1.0, help="Ray: CPUs per actor (-1: cluster CPUs / actors; sets torch threads)")
    decode_threads: int = option(2, help="Ray: decoding threads inside each actor")
    max_retries: int = option(3, help="Ray: attempts per partition after a lost actor or node")
    progress: bool = option(True, help="Show a progress bar")
