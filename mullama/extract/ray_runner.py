"""Extraction on a Ray cluster: one actor per encoder replica, partitions as the unit of work.

The driver plans (which clips are missing from the store), splits the work into partitions and hands them
to actors through the distributor (mullama/distribute.py), two per actor so the model never idles. Each actor
decodes in threads ahead of its model, encodes, writes its partition to the shared store and commits it. A
partition whose actor or node dies counts as done if its commit landed anyway, else it is retried on another
actor under a NEW partition id, so a half-written attempt (even one a zombie is still writing) never becomes
visible and never shares a chunk with the retry.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import ray
from tqdm import tqdm

from mullama.config import validate
from mullama.distribute import Done, Retries, WorkerFactory, WorkerPool, last_line
from mullama.encoder_identity import AUDIO
from mullama.errors import MullamaError
from mullama.extract.claims import SharedWork
from mullama.extract.config import ExtractConfig
from mullama.extract.pipeline import PartitionPipeline, PipelineSettings, ensure_silence_stack
from mullama.extract.plan import ExtractionPlan, PartitionTask, plan_extraction, read_spec
from mullama.extract.reader import Decoder
from mullama.extract.summary import ClipOutcome, ExtractSummary, PartitionReport
from mullama.raycluster import connect
from mullama.store import SILENCE_CLIP, FeatureStore
from mullama.store.partition import commit_key
from mullama.store.writers import WriterLease, check_live

POLL_SECONDS = 1.0
SLOTS_PER_ACTOR = 2  # a second partition waits in each actor's queue, so the model never idles between two


class ExtractionActor:
    """Holds one encoder replica; runs partitions one at a time and answers progress polls meanwhile."""

    def __init__(self, config: ExtractConfig, settings: Any, decoder: Decoder):
        self.name = short_name(ray.get_runtime_context().get_actor_name())
        self.encoder = read_spec(config).load(config.device, config.precision)
        store = FeatureStore.open(config.store)
        if not store.encoder.same_encoder(self.encoder.identity):
            raise MullamaError(f"actor {self.name}: the encoder folder {config.encoder_folder()[1]} on this node "
                               "differs from the one the store was planned with; every node needs the same checkpoint")
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
        store = self.pipeline.store
        ensure_silence_stack(store, self.encoder, run_id, before_commit=lambda: check_live(store.location, run_id))

    @ray.method(concurrency_group="report")
    def progress(self) -> tuple[int, int, float]:
        """(clips of the running partition done, clips of finished partitions, seconds spent working)."""
        return self.in_partition, self.clips_done, self.busy_seconds


def short_name(actor_name: str) -> str:
    """'actor0' for 'mullama-extract-<run id>-0': the distributor numbers the actors it starts."""
    return f"actor{actor_name.rsplit('-', 1)[-1]}"


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
    factory = WorkerFactory(ExtractionActor, (config, plan.decode, plan.decoder), count, per_cpu, per_gpu,
                            name_prefix=f"mullama-extract-{plan.run_id}", label="extraction",
                            tasks_in_flight=SLOTS_PER_ACTOR, ray_options={"concurrency_groups": {"work": 1,
                                                                                                "report": 1}})
    bar = tqdm(total=len(plan.todo), unit="clip", disable=not config.progress, desc=f"extract[{count} actors]",
               dynamic_ncols=True)
    try:
        with WriterLease(plan.store.location, plan.run_id) as lease, WorkerPool(factory) as pool:
            work = SharedWork(plan, lease)  # claims first: the sooner they are visible, the less is done twice
            write_silence_stack(pool, plan.run_id)
            retries = Retries(config.max_retries + 1, recover=lambda task: committed_anyway(plan, task),
                              renew=PartitionTask.retry)

            def on_poll(actors: Mapping[str, Any]) -> None:
                lease.check()
                show_progress(bar, actors, plan.summary.processed)

            sources = plan.todo
            while sources:
                for done in pool.run(work.tasks(sources, config.partition_size), run_partition, retries, on_poll,
                                     describe=lambda task: f"partition {task.index}"):
                    record(plan.summary, done)
                sources = work.remaining()
    finally:
        bar.close()
    plan.summary.skipped = plan.summary.inputs - plan.summary.processed
    return plan.finish(started)


def run_partition(actor: Any, task: PartitionTask) -> Any:
    return actor.run_partition.remote(task)


def write_silence_stack(pool: WorkerPool, run_id: str) -> None:
    """Once per store, before any partition, by whichever actor is up first."""
    for done in pool.run([run_id], lambda actor, run: actor.ensure_silence_stack.remote(run)):
        if done.error is not None:
            raise done.error


def committed_anyway(plan: ExtractionPlan, task: PartitionTask) -> PartitionReport | None:
    """A partition whose actor died counts as done if its commit landed before it did."""
    if not plan.store.location.exists(commit_key(task.partition_id)):
        return None
    plan.store.refresh()
    return PartitionReport(task.partition_id,
                           [ClipOutcome.of_record(plan.store.record(source.clip_id)) for source in task.sources])


def record(summary: ExtractSummary, done: Done[PartitionTask]) -> None:
    """A partition's outcomes; every clip failed when the partition ran out of attempts."""
    if done.error is None:
        for outcome in done.result.outcomes:
            summary.record(outcome)
        return
    reason = f"partition_failed: {done.attempts} attempts, last error {last_line(done.error)}"  # names a failed request
    for source in done.task.sources:
        summary.record(ClipOutcome(source.clip_id, False, reason))


def show_progress(bar: tqdm, actors: Mapping[str, Any], finished: int) -> None:
    """Clips of finished partitions plus each actor's running count, and per-actor throughput."""
    refs = {name: handle.progress.remote() for name, handle in actors.items()}
    running, rates = 0, []
    for name, ref in refs.items():
        try:
            in_partition, done, busy = ray.get(ref, timeout=POLL_SECONDS)
        except Exception:  # a restarting or dead actor reports nothing this round
            rates.append(f"{short_name(name)}=-")
            continue
        running += in_partition
        rates.append(f"{short_name(name)}={done / busy:.2f}/s" if busy else f"{short_name(name)}=-")
    bar.n = min(finished + running, bar.total)
    bar.set_postfix_str(" ".join(rates), refresh=False)
    bar.refresh()
