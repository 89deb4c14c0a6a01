"""Local extraction: reader processes -> encoder -> partition writer thread, resumable and idempotent.

Clips already committed to the store are skipped, so re-running the same command after a crash or
kill -9 finishes the job without duplicating or losing a clip.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator

import numpy as np
from tqdm import tqdm

from mullama.data.manifest import ClipSource, resolve_sources
from mullama.extract.config import ExtractConfig
from mullama.extract.encoder import ConvGeometry, EncoderSpec, MertEncoder
from mullama.extract.mapper import encode_clips
from mullama.extract.reader import DecodeSettings, decode_stream
from mullama.store import SILENCE_CLIP, ClipResult, FeatureStore, StoreSettings
from mullama.store.schema import STATUS_OK


@dataclass
class ExtractSummary:
    store: str
    inputs: int
    skipped: int = 0
    processed: int = 0
    ok: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    windows: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    partitions: int = 0
    store_bytes: int = 0

    @property
    def clips_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def failure_reasons(self) -> dict[str, int]:
        return dict(collections.Counter(reason.split(":", 1)[0] for _, reason in self.failures))

    def add(self, result: ClipResult) -> None:
        windows = 0 if result.window_stacks is None else result.window_stacks.shape[0]
        self.record(result.clip_id, result.ok, result.reason, windows, result.duration)

    def record(self, clip_id: str, ok: bool, reason: str, windows: int, duration: float) -> None:
        self.processed += 1
        if ok:
            self.ok += 1
            self.windows += windows
            self.audio_seconds += duration
        else:
            self.failures.append((clip_id, reason))


@dataclass
class ExtractionPlan:
    """What a run must do: the store to write, the clips still missing from it, how to decode them."""

    store: FeatureStore
    todo: list[ClipSource]
    decode: DecodeSettings
    summary: ExtractSummary


def store_settings(config: ExtractConfig) -> StoreSettings:
    return StoreSettings(window_seconds=config.window_seconds, min_window_seconds=config.min_window_seconds,
                         dtype=config.dtype)


def decode_settings(sample_rate: int, geometry: ConvGeometry, config: ExtractConfig) -> DecodeSettings:
    return DecodeSettings(
        sample_rate=sample_rate,
        window_samples=int(round(config.window_seconds * sample_rate)),
        min_last_samples=max(geometry.receptive_field, int(round(config.min_window_seconds * sample_rate))),
        min_samples=geometry.receptive_field,
    )


def plan_extraction(config: ExtractConfig, spec: EncoderSpec) -> ExtractionPlan:
    """Open (or create) the store for this encoder and list the clips not committed yet."""
    sources = resolve_sources(config.input, config.audio_root or None)
    store = FeatureStore.open_or_create(config.store, spec.identity, store_settings(config))
    done = {r.clip_id for r in store.records() if r.status == STATUS_OK or not config.retry_failed}
    todo = [s for s in sources if s.clip_id not in done]
    summary = ExtractSummary(store=config.store, inputs=len(sources), skipped=len(sources) - len(todo))
    return ExtractionPlan(store, todo, decode_settings(spec.identity.sample_rate, spec.geometry, config), summary)


def finish_summary(plan: ExtractionPlan, started: float) -> ExtractSummary:
    summary = plan.summary
    summary.seconds = time.perf_counter() - started
    plan.store.refresh()
    summary.partitions = len(plan.store.commits())
    summary.store_bytes = plan.store.location.size_bytes()
    return summary


def ensure_silence_stack(store: FeatureStore, encoder: MertEncoder) -> None:
    """Cache the stack of 1 s of silence once per store (text-only training items reuse it, SPEC 1.5)."""
    if SILENCE_CLIP in store:
        return
    silence = np.zeros(encoder.sample_rate, dtype=np.float32)
    result = ClipResult(SILENCE_CLIP, "(1 s of digital silence)", duration=1.0,
                        window_stacks=encoder.encode([silence]))
    store.write_partition([result], store.new_partition_id(prefix="special"))


def chunked(items: list[ClipSource], size: int) -> Iterator[list[ClipSource]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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
    ensure_silence_stack(plan.store, encoder)
    summary = plan.summary
    started = time.perf_counter()
    bar = tqdm(total=len(plan.todo), unit="clip", disable=not config.progress, desc="extract", dynamic_ncols=True)

    def clip_done(result: ClipResult) -> None:
        summary.add(result)
        bar.update(1)
        bar.set_postfix(windows=summary.windows, failed=len(summary.failures), refresh=False)

    lookahead = max(2, 2 * config.workers + config.batch_size)
    stream = decode_stream(plan.todo, plan.decode, config.workers, lookahead)
    writes: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(1, thread_name_prefix="partition-writer") as writer:
        try:
            for part in chunked(plan.todo, config.partition_size):
                results = encode_clips(encoder, islice(stream, len(part)), config.batch_size, on_clip_done=clip_done)
                while writes:  # at most one partition waits to be written while the next one encodes
                    writes.popleft().result()
                writes.append(writer.submit(plan.store.write_partition, results))
            while writes:
                writes.popleft().result()
        finally:
            stream.close()
            bar.close()
    return finish_summary(plan, started)
