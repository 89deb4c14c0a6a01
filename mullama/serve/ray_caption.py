"""`mullama caption --ray`: partitions of clips captioned by model replicas on a Ray cluster.

Each actor loads the model once (whole or fractional GPUs, or CPUs) and reads stacks from the store itself;
the driver hands out partitions, writes each finished one as its part file, and merges at the end
(mullama/serve/caption.py). A partition whose actor dies is given to a fresh actor, up to MAX_ATTEMPTS
times; its clips are reported failed after that. Partitions are seeded by number, so the captions do not
depend on which actor wrote them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from mullama.errors import MullamaError
from mullama.raycluster import connect
from mullama.serve.config import CaptionConfig
from mullama.serve.partitions import CaptionPlan, caption_partition, write_part

MAX_ATTEMPTS = 3  # a partition that kills three actors is not going to succeed on a fourth


class Captioner:
    """One model replica; Ray runs it as an actor."""

    def __init__(self, config: CaptionConfig):
        from mullama.model import MusicLlama
        from mullama.store.feature_store import FeatureStore

        self.store = FeatureStore.open(config.store)
        self.model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype,
                                     device="cuda" if ray.get_gpu_ids() else "cpu", encoder=self.store.encoder)

    def ready(self) -> bool:
        return True

    def caption(self, clips: list[str], number: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
        return caption_partition(self.model, self.store, clips, number, settings)


def absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def actor_name(number: int) -> str:
    """Unique per driver process, so two runs on one cluster never collide (and a test can find them)."""
    return f"mullama-caption-{os.getpid()}-{number}"


def actor_options(config: CaptionConfig) -> tuple[int, dict[str, float]]:
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    if gpus:
        count = config.ray_actors or max(1, int(gpus / config.ray_gpus_per_actor))
        return count, {"num_gpus": config.ray_gpus_per_actor, "num_cpus": config.ray_cpus_per_actor}
    # CPU-only: fractional CPUs leave room for Ray's own work (whole-CPU actors on 2 cores can deadlock)
    count = config.ray_actors or 2
    return count, {"num_cpus": min(config.ray_cpus_per_actor, max(0.25, cluster.get("CPU", 1.0) / count - 0.5))}


def caption_on_ray(config: CaptionConfig, plan: CaptionPlan, todo: list[int], folder: Path) -> list[str]:
    """Caption partitions `todo` into part files; return the clips of partitions that failed every attempt."""
    connect(config.ray)
    # actors do not share the driver's working directory: hand them absolute local paths
    config = dataclasses.replace(config, **{name: absolute(getattr(config, name)) for name in ("store", "adapter",
                                                                                              "llama")})
    if config.device != "auto" and config.device.startswith("cuda") and not ray.cluster_resources().get("GPU"):
        raise MullamaError(f"--device {config.device}: the Ray cluster has no GPUs")
    count, options = actor_options(config)
    remote = ray.remote(max_restarts=0)(Captioner)
    actors: list[Any] = []

    def start_actor() -> Any:
        actors.append(remote.options(name=actor_name(len(actors)), **options).remote(config))
        return actors[-1]

    for _ in range(count):
        start_actor()
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except RayActorError as exc:
        raise MullamaError(f"a Ray caption actor failed to start: {str(exc).strip().splitlines()[-1]}") from None
    attempts = {number: 0 for number in todo}
    queue = list(todo)
    inflight: dict[Any, tuple[Any, int]] = {}
    failed: list[str] = []
    bar = tqdm(total=sum(len(plan.partitions[n]) for n in todo), unit="clip", desc=f"caption[{count} actors]",
               disable=not config.progress, dynamic_ncols=True)
    try:
        with bar:
            idle = list(actors)
            while queue or inflight:
                while queue and idle:
                    number = queue.pop(0)
                    actor = idle.pop(0)
                    attempts[number] += 1
                    inflight[actor.caption.remote(plan.partitions[number], number, plan.settings)] = (actor, number)
                ready, _ = ray.wait(list(inflight), num_returns=1)
                actor, number = inflight.pop(ready[0])
                try:
                    rows = ray.get(ready[0])
                except (RayActorError, RayTaskError):
                    ray.kill(actor, no_restart=True)
                    idle.append(start_actor())  # a fresh replica in its place
                    if attempts[number] < MAX_ATTEMPTS:
                        queue.insert(0, number)
                    else:
                        failed += plan.partitions[number]
                    continue
                write_part(folder, number, rows)
                bar.update(len(rows))
                idle.append(actor)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return failed
