"""Local extraction: the partition pipeline in this process, resumable and idempotent.

Clips already committed to the store are skipped, so re-running the same command after a crash or
kill -9 finishes the job without duplicating or losing a clip.
"""

from __future__ import annotations

import time

from tqdm import tqdm

from mullama.extract.config import ExtractConfig
from mullama.extract.encoder import EncoderSpec, MertEncoder
from mullama.extract.pipeline import (
    PartitionPipeline,
    PipelineSettings,
    ensure_silence_stack,
)
from mullama.extract.plan import plan_extraction
from mullama.extract.summary import ExtractSummary
from mullama.store import ClipResult


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Dispatch to the local runner, or to Ray when `config.ray` names a cluster."""
    if config.ray:
        from mullama.extract.ray_runner import run_ray

        return run_ray(config)
    return run_local(config)


def run_local(config: ExtractConfig, encoder: MertEncoder | None = None) -> ExtractSummary:
    """Extract every pending clip of `config.input` into `config.store` on this machine."""
    encoder = encoder or MertEncoder.load(config.mert, config.device, config.precision)
    plan = plan_extraction(config, EncoderSpec(config.mert, encoder.identity, encoder.geometry))
    ensure_silence_stack(plan.store, encoder, encoder.sample_rate)
    started = time.perf_counter()
    bar = tqdm(total=len(plan.todo), unit="clip", disable=not config.progress, desc="extract", dynamic_ncols=True)
    counts = {"windows": 0, "failed": 0}

    def clip_done(result: ClipResult) -> None:
        counts["windows"] += 0 if result.window_stacks is None else result.window_stacks.shape[0]
        counts["failed"] += not result.ok
        bar.update(1)
        bar.set_postfix(counts, refresh=False)

    pipeline = PartitionPipeline(encoder, plan.store, PipelineSettings(plan.decode, config.batch_size, config.workers),
                                 on_clip_done=clip_done)
    with bar:
        for report in pipeline.run(plan.tasks(config.partition_size)):
            for outcome in report.outcomes:
                plan.summary.record(outcome)
    return plan.finish(started)
