"""Extraction on a Ray cluster: one actor per encoder replica, partitions as the unit of work.

The driver plans (which clips are missing from the store), splits the work into partitions and
hands them to actors. Each actor decodes in threads ahead of its model, encodes, writes its
partition to the shared store and commits it. A partition whose actor or node dies is retried on
another actor under a NEW partition id, so a half-written attempt (even one a zombie is still
writing) never becomes visible and never shares a chunk with the retry.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any, Iterator

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from tqdm import tqdm

from mullama.config import validate
from mullama.encoder_identity import AUDIO
from mullama.errors import MullamaError
from mullama.extract.claims import SharedWork
from mullama.extract.config import ExtractConfig
from mullama.extract.pipeline import PipelineSettings
from mullama.extract.plan import ExtractionPlan, PartitionTask, plan_extraction, read_spec
from mullama.extract.reader import Decoder
from mullama.extract.summary import ClipOutcome, ExtractSummary, PartitionReport
from mullama.raycluster import connect
from mullama.store import SILENCE_CLIP
from mullama.store.partition import commit_key
from mullama.store.writers import WriterLease, check_live

POLL_SECONDS = 1.0
SLOTS_PER_ACTOR = 2  # a second partition waits in each actor's queue, so the model never idles between two


@ray.remote(concurrency_groups={"work": 1, "report": 1}, max_restarts=2)
class ExtractionActor:
    """Holds one encoder replica; runs partitions one at a time and answers progress polls meanwhile."""

    def __init__(self, config: ExtractConfig, settings: Any, decoder: Decoder, name: str):
        from mullama.extract.pipeline import PartitionPipeline
        from mullama.store import FeatureStore

        self.name = name
        self.encoder = read_spec(config).load(config.device, config.precision)
        store = FeatureStore.open(config.store)
        if not store.encoder.same_encoder(self.encoder.identity):
            raise MullamaError(f"actor {name}: the encoder folder {config.encoder_folder()[1]} on this node differs "
                               "from the one the store was planned with; every node needs the same checkpoint")
        self.pipeline = PartitionPipeline(
            self.encoder, store, PipelineSettings(settings, config.batch_size, config.decode_threads, processes=False,
                                                  decoder=decoder),
            on_clip_done=self._count, before_commit=lambda task: check_live(store.location, task.run_id))
        self.in_partition = 0
        self.clips_done = 0
        self.busy_seconds = 0.0

    @ray.method(concurrency_group="work")
    def run_partition(self, task: PartitionTask) -> PartitionReport:
        started = time.perf_counter()
        self.in_partition = 0
        report = self.pipeline.process(task)
        report.actor = self.name
        self.busy_seconds += time.perf_counter() - started
        self.clips_done += len(report.outcomes)
        self.in_partition = 0
        return report

    def _count(self, _result: Any) -> None:
        self.in_partition += 1

    @ray.method(concurrency_group="work")
    def ensure_silence_stack(self, run_id: str) -> None:
        from mullama.extract.pipeline import ensure_silence_stack

        store = self.pipeline.store
        ensure_silence_stack(store, self.encoder, run_id, before_commit=lambda: check_live(store.location, run_id))

    @ray.method(concurrency_group="report")
    def progress(self) -> tuple[int, int, float]:
        """(clips of the running partition done, clips of finished partitions, seconds spent working)."""
        return self.in_partition, self.clips_done, self.busy_seconds


def actor_resources(config: ExtractConfig) -> tuple[int, float, float]:
    """How many actors, and the CPUs and GPUs each asks for."""
    cluster = ray.cluster_resources()
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    per_gpu = config.actor_gpus if config.actor_gpus >= 0 else (1.0 if gpus else 0.0)
    if per_gpu > 0 and gpus < per_gpu:
        raise MullamaError(f"--actor-gpus {per_gpu} asked for, but the Ray cluster has {gpus} GPUs")
    count = config.actors or (int(gpus / per_gpu) if per_gpu else 2)
    # Fractional CPUs leave room for Ray's own tasks: whole-CPU actors on a 2-core node deadlock.
    per_cpu = config.actor_cpus if config.actor_cpus > 0 else max(0.5, math.floor(cpus / count * 2) / 2 - 0.5)
    return count, per_cpu, per_gpu


def run_ray(config: ExtractConfig) -> ExtractSummary:
    """Extract the clips missing from `config.store` on a Ray cluster; the driver holds the writer lease."""
    validate(config)
    spec = read_spec(config)
    connect(config.ray)
    count, per_cpu, per_gpu = actor_resources(config)
    # Every actor must compute in the precision the store records: resolve "auto" once, here.
    precision = config.precision if config.precision != "auto" else ("bf16" if per_gpu > 0 else "fp32")
    config = dataclasses.replace(config, precision=precision)
    plan = plan_extraction(config, spec, precision)
    started = time.perf_counter()
    if not plan.todo and (SILENCE_CLIP in plan.store or spec.identity.modality != AUDIO):
        return plan.finish(started)
    actors = {f"actor{n}": ExtractionActor.options(
        name=f"mullama-extract-{plan.run_id}-{n}", num_cpus=per_cpu, num_gpus=per_gpu).remote(
        config, plan.decode, plan.decoder, f"actor{n}") for n in range(count)}
    bar = tqdm(total=len(plan.todo), unit="clip", disable=not config.progress, desc=f"extract[{count} actors]",
               dynamic_ncols=True)
    handles = list(actors.values())  # dispatch drops dead actors from `actors`; all are killed here
    try:
        with WriterLease(plan.store.location, plan.run_id) as lease:
            work = SharedWork(plan, lease)  # claims first: the sooner they are visible, the less is done twice
            wait_until_loaded(actors)
            ray.get(handles[0].ensure_silence_stack.remote(plan.run_id))
            sources = plan.todo
            while sources:
                dispatch(actors, work.tasks(sources, config.partition_size), plan, plan.summary, config, bar, lease)
                sources = work.remaining()
    finally:
        bar.close()
        for handle in handles:
            ray.kill(handle, no_restart=True)
    plan.summary.skipped = plan.summary.inputs - plan.summary.processed
    return plan.finish(started)


def wait_until_loaded(actors: dict[str, Any]) -> None:
    """Surface a failing actor constructor (wrong checkpoint on a node, no GPU) as one clear error."""
    try:
        ray.get([handle.progress.remote() for handle in actors.values()])
    except RayActorError as exc:
        cause = getattr(exc, "error_msg", None) or str(exc)
        raise MullamaError(f"a Ray extraction actor failed to start: {cause.strip().splitlines()[-1]}") from None


def dispatch(actors: dict[str, Any], fresh: Iterator[PartitionTask], plan: ExtractionPlan, summary: ExtractSummary,
             config: ExtractConfig, bar: tqdm, lease: WriterLease) -> None:
    """Keep every healthy actor's queue full until all partitions are committed or out of retries.

    `fresh` is lazy (each partition is checked against other writers' claims when it is handed out);
    retries go first. When a task fails, its actor gets no more work until a probe call answers: a
    restarted actor (Ray restarts lost actors) comes back, a dead one is dropped, and the partition goes
    to others.
    """
    free = [name for name in actors for _ in range(SLOTS_PER_ACTOR)]
    inflight: dict[Any, tuple[str, PartitionTask]] = {}
    probes: dict[Any, str] = {}
    queue: collections.deque[PartitionTask] = collections.deque()  # retries
    exhausted = False
    while True:
        while free and (queue or not exhausted):
            task = queue.popleft() if queue else next(fresh, None)
            if task is None:
                exhausted = True
                break
            name = free.pop(0)
            inflight[actors[name].run_partition.remote(task)] = (name, task)
        if not inflight and not queue and exhausted:
            return
        lease.check()
        if not inflight and not probes:
            raise MullamaError("every Ray extraction actor died; see the Ray logs for why")
        ready, _ = ray.wait(list(inflight) + list(probes), num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            if ref in probes:
                name = probes.pop(ref)
                try:
                    ray.get(ref)
                    busy = sum(owner == name for owner, _ in inflight.values())
                    free += [name] * (SLOTS_PER_ACTOR - busy)
                except ActorUnavailableError:  # restarting or unreachable for now: ask again later
                    probes[actors[name].progress.remote()] = name
                except RayActorError:
                    actors.pop(name, None)
                continue
            name, task = inflight.pop(ref)
            try:
                report: PartitionReport = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                if name in actors and name not in probes.values():
                    free = [other for other in free if other != name]
                    probes[actors[name].progress.remote()] = name
                handle_lost_partition(plan, task, queue, summary, config.max_retries, exc)
                continue
            free.append(name)
            for outcome in report.outcomes:
                summary.record(outcome)
        show_progress(bar, actors, summary.processed)


def handle_lost_partition(plan: ExtractionPlan, task: PartitionTask, queue: collections.deque,
                          summary: ExtractSummary, max_retries: int, error: Exception) -> None:
    """A partition whose actor died: done if its commit landed anyway, else retried under a new id."""
    if plan.store.location.exists(commit_key(task.partition_id)):
        plan.store.refresh()
        for source in task.sources:
            summary.record(ClipOutcome.of_record(plan.store.record(source.clip_id)))
        return
    if task.attempt < max_retries:
        queue.appendleft(task.retry())
        return
    reason = f"partition_failed: {task.attempt + 1} attempts, last error {type(error).__name__}"
    for source in task.sources:
        summary.record(ClipOutcome(source.clip_id, False, reason))


def show_progress(bar: tqdm, actors: dict[str, Any], finished: int) -> None:
    """Clips of finished partitions plus each actor's running count, and per-actor throughput."""
    refs = {name: handle.progress.remote() for name, handle in actors.items()}
    running, rates = 0, []
    for name, ref in refs.items():
        try:
            in_partition, done, busy = ray.get(ref, timeout=POLL_SECONDS)
        except Exception:  # a restarting or dead actor reports nothing this round
            rates.append(f"{name}=-")
            continue
        running += in_partition
        rates.append(f"{name}={done / busy:.2f}/s" if busy else f"{name}=-")
    bar.n = min(finished + running, bar.total)
    bar.set_postfix_str(" ".join(rates), refresh=False)
    bar.refresh()
