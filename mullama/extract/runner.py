"""Local extraction: the partition pipeline in this process, resumable, idempotent and safe beside
other writers of the same store.

Clips already committed to the store are skipped (unless their source changed), so re-running the same
command after a crash or kill -9 finishes the job without duplicating or losing a clip. The run holds
a writer lease on the store while it works and claims its clips (mullama.store.writers).
"""

from __future__ import annotations

import time

from tqdm import tqdm

from mullama.config import validate
from mullama.extract.claims import SharedWork
from mullama.extract.config import ExtractConfig
from mullama.extract.encoder import StackEncoder
from mullama.extract.pipeline import PartitionPipeline, PipelineSettings, ensure_silence_stack
from mullama.extract.plan import plan_extraction, read_spec
from mullama.extract.ray_runner import run_ray
from mullama.extract.summary import ExtractSummary
from mullama.store import ClipResult
from mullama.store.writers import WriterLease


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Dispatch to the local runner, or to Ray when `config.ray` names a cluster."""
    if config.ray:
        return run_ray(config)
    return run_local(config)


def run_local(config: ExtractConfig, encoder: StackEncoder | None = None) -> ExtractSummary:
    """Extract every pending clip of `config.input` into `config.store` on this machine."""
    validate(config)
    spec = read_spec(config)
    encoder = encoder or spec.load(config.device, config.precision)
    plan = plan_extraction(config, spec, encoder.precision)
    started = time.perf_counter()
    bar = tqdm(total=len(plan.todo), unit="clip", disable=not config.progress, desc="extract", dynamic_ncols=True)
    counts = {"windows": 0, "failed": 0}

    def clip_done(result: ClipResult) -> None:
        counts["windows"] += 0 if result.window_stacks is None else result.window_stacks.shape[0]
        counts["failed"] += not result.ok
        bar.update(1)
        bar.set_postfix(counts, refresh=False)

    def waiting(clips: int) -> None:
        bar.set_description(f"extract (waiting for {clips} clips another writer holds)")

    with WriterLease(plan.store.location, plan.run_id) as lease, bar:
        work = SharedWork(plan, lease)  # claims first: the sooner they are visible, the less is done twice
        ensure_silence_stack(plan.store, encoder, plan.run_id, before_commit=lease.check)
        pipeline = PartitionPipeline(encoder, plan.store,
                                     PipelineSettings(plan.decode, config.batch_size, config.workers,
                                                      decoder=plan.decoder),
                                     on_clip_done=clip_done, before_commit=lambda task: lease.check())
        sources = plan.todo
        while sources:
            for report in pipeline.run(work.tasks(sources, config.partition_size)):
                for outcome in report.outcomes:
                    plan.summary.record(outcome)
            sources = work.remaining(on_wait=waiting)
            bar.set_description("extract")
    plan.summary.skipped = plan.summary.inputs - plan.summary.processed
    return plan.finish(started)
