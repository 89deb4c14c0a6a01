"""`mullama qa generate --ray`: a local model's batches spread over a Ray cluster, one model replica per actor.

The driver keeps the files: actors only answer batches (through the distributor, mullama/distribute.py), and
each batch's rows are written as soon as it comes back, so a run killed costs at most the batches in flight
(resumed like any run). A batch whose actor is lost is asked again on another, up to RAY_ATTEMPTS times in
all; after that its clips are recorded as failed (asked again with --retry-failed). A node that joins
mid-run gets replicas of its own while batches remain. Seeds depend on the batch, not on the actor, so the
result does not depend on how the work was spread.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import ray

from mullama.data.qagen.ask import ask_batch
from mullama.data.qagen.backends import LocalBackend
from mullama.data.qagen.config import QaGenerateConfig
from mullama.data.qagen.instructions import Bounds
from mullama.data.qagen.sources import SourceClip
from mullama.distribute import Done, Retries, WorkerFactory, WorkerPool
from mullama.raycluster import connect

CPU_ACTORS = 2  # replicas on a cluster without GPUs (a CPU replica uses every core it is given)
RAY_ATTEMPTS = 3  # a batch that loses three actors is not going to succeed on a fourth

Rows = tuple[list[dict[str, Any]], list[dict[str, Any]]]


def ask_on_ray(config: QaGenerateConfig, todo: list[SourceClip], bounds: Bounds) -> Iterator[Rows]:
    """(rows, failures) batch by batch, in the order the batches finish."""
    connect(config.ray)
    gpus = ray.cluster_resources().get("GPU", 0)
    count = config.ray_actors or (int(gpus // config.ray_gpus_per_actor) if gpus else CPU_ACTORS)
    factory = WorkerFactory(QaWorker, (os.path.abspath(config.llm), config.max_new_tokens, config.dtype),
                            max(1, count), cpus=0.0 if gpus else 1.0, gpus=config.ray_gpus_per_actor if gpus else 0.0,
                            name_prefix=f"mullama-qa-{os.getpid()}", label="qa generation")
    batches = [todo[start:start + config.batch_size] for start in range(0, len(todo), config.batch_size)]
    with WorkerPool(factory) as pool:
        for done in pool.run(batches, lambda actor, batch: actor.ask.remote(batch, config.seed, config.max_attempts,
                                                                             bounds), Retries(RAY_ATTEMPTS),
                             describe=lambda batch: f"batch {batch[0].clip_id}..{batch[-1].clip_id}"):
            yield done.result if done.error is None else ([], lost_batch(done))


def lost_batch(done: Done[list[SourceClip]]) -> list[dict[str, Any]]:
    """Failure rows for the clips of a batch whose every attempt lost its actor."""
    reason = f"lost on Ray: {done.attempts} attempts, last error {type(done.error).__name__}"
    return [{"clip_id": clip.clip_id, "request": "", "reason": reason, "last_output": ""} for clip in done.task]


class QaWorker:
    """One model replica (created by Ray as an actor)."""

    def __init__(self, folder: str, max_new_tokens: int, dtype: str):
        self.backend = LocalBackend(folder, max_new_tokens, "auto", dtype)

    def ask(self, batch: list[SourceClip], seed: int, max_attempts: int, bounds: Bounds) -> Rows:
        return ask_batch(self.backend.complete, batch, seed, max_attempts, bounds)
