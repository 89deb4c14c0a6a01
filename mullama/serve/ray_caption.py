"""`mullama caption --ray`: partitions of clips captioned by model replicas on a Ray cluster.

Each actor loads the model once (whole or fractional GPUs, or CPUs) and reads stacks from the store itself;
the driver hands out partitions through the distributor (mullama/distribute.py), writes each finished one as
its part file, and merges at the end (mullama/serve/caption.py). A partition whose actor dies is retried on
another (Ray restarts the lost one), up to MAX_ATTEMPTS times in all; its clips are reported failed after that.
A node that joins mid-run gets replicas of its own while partitions remain.
Partitions are seeded by number, so the captions do not depend on which actor wrote them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from mullama.distribute import Retries, WorkerFactory, WorkerPool
from mullama.errors import MullamaError
from mullama.model import MusicLlama
from mullama.objectstore import ObjectFolder
from mullama.raycluster import connect
from mullama.serve.config import CaptionConfig
from mullama.serve.partitions import CaptionPlan, caption_partition, write_part
from mullama.store.feature_store import FeatureStore

MAX_ATTEMPTS = 3  # a partition that kills three actors is not going to succeed on a fourth


class Captioner:
    """One model replica; Ray runs it as an actor."""

    def __init__(self, config: CaptionConfig):
        self.store = FeatureStore.open(config.store)
        self.model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype,
                                     device="cuda" if ray.get_gpu_ids() else "cpu", encoder=self.store.encoder)

    def caption(self, clips: list[str], number: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
        return caption_partition(self.model, self.store, clips, number, settings)


def absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def actor_prefix() -> str:
    """Unique per driver process, so two runs on one cluster never collide (and a test can find them)."""
    return f"mullama-caption-{os.getpid()}"


def actor_options(config: CaptionConfig) -> tuple[int, float, float]:
    """How many replicas, and the CPUs and GPUs each asks for."""
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    if gpus:
        count = config.ray_actors or max(1, int(gpus / config.ray_gpus_per_actor))
        return count, config.ray_cpus_per_actor, config.ray_gpus_per_actor
    # CPU-only: fractional CPUs leave room for Ray's own work (whole-CPU actors on 2 cores can deadlock)
    count = config.ray_actors or 2
    return count, min(config.ray_cpus_per_actor, max(0.25, cluster.get("CPU", 1.0) / count - 0.5)), 0.0


def caption_on_ray(config: CaptionConfig, plan: CaptionPlan, todo: list[int], parts: ObjectFolder) -> list[str]:
    """Caption partitions `todo` into parts; return the clips of partitions that failed every attempt."""
    connect(config.ray)
    # actors do not share the driver's working directory: hand them absolute local paths
    config = dataclasses.replace(config, **{name: absolute(getattr(config, name)) for name in ("store", "adapter",
                                                                                              "llama")})
    if config.device != "auto" and config.device.startswith("cuda") and not ray.cluster_resources().get("GPU"):
        raise MullamaError(f"--device {config.device}: the Ray cluster has no GPUs")
    count, cpus, gpus = actor_options(config)
    factory = WorkerFactory(Captioner, (config,), count, cpus, gpus, name_prefix=actor_prefix(), label="caption")
    failed: list[str] = []
    bar = tqdm(total=sum(len(plan.partitions[n]) for n in todo), unit="clip", desc=f"caption[{count} actors]",
               disable=not config.progress, dynamic_ncols=True)
    with bar, WorkerPool(factory) as pool:
        for done in pool.run(todo, lambda actor, number: actor.caption.remote(plan.partitions[number], number,
                                                                              plan.settings), Retries(MAX_ATTEMPTS),
                             describe=lambda number: f"partition {number}"):
            if done.error is not None:
                failed += plan.partitions[done.task]
                continue
            write_part(parts, done.task, done.result)
            bar.update(len(done.result))
    return failed
