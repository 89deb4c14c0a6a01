"""`mullama qa generate --ray`: a local model's batches spread over a Ray cluster, one model replica per actor.

The driver keeps the files: actors only answer batches, and each batch's rows are written as soon as it comes
back, so a run killed or a lost actor costs at most the batches in flight (resumed like any run). Seeds
depend on the batch, not on the actor, so the result does not depend on how the work was spread.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from mullama.data.qagen.ask import ask_batch
from mullama.data.qagen.config import QaGenerateConfig
from mullama.data.qagen.instructions import Bounds
from mullama.data.qagen.sources import SourceClip

CPU_ACTORS = 2  # replicas on a cluster without GPUs (a CPU replica uses every core it is given)


def ask_on_ray(config: QaGenerateConfig, todo: list[SourceClip],
               bounds: Bounds) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    import ray
    from ray.util import ActorPool

    from mullama.raycluster import connect

    connect(config.ray)
    gpus = ray.cluster_resources().get("GPU", 0)
    actors = config.ray_actors or (int(gpus // config.ray_gpus_per_actor) if gpus else CPU_ACTORS)
    options = {"num_gpus": config.ray_gpus_per_actor} if gpus else {"num_cpus": 1}
    worker = ray.remote(**options)(QaWorker)
    folder = os.path.abspath(config.llm)
    pool = ActorPool([worker.remote(folder, config.max_new_tokens, config.dtype) for _ in range(max(1, actors))])
    batches = [todo[start:start + config.batch_size] for start in range(0, len(todo), config.batch_size)]
    yield from pool.map_unordered(lambda actor, batch: actor.ask.remote(batch, config.seed, config.max_attempts,
                                                                        bounds), batches)


class QaWorker:
    """One model replica (created by Ray as an actor)."""

    def __init__(self, folder: str, max_new_tokens: int, dtype: str):
        from mullama.data.qagen.backends import LocalBackend

        self.backend = LocalBackend(folder, max_new_tokens, "auto", dtype)

    def ask(self, batch: list[SourceClip], seed: int, max_attempts: int,
            bounds: Bounds) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return ask_batch(self.backend.complete, batch, seed, max_attempts, bounds)
