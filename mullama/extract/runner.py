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

from tqdm import tqdm

from mullama.data.manifest import ClipSource, resolve_sources
from mullama.extract.config import ExtractConfig
from mullama.extract.encoder import MertEncoder
from mullama.extract.mapper import encode_clips
from mullama.extract.reader import DecodeSettings, decode_stream
from mullama.store import ClipResult, FeatureStore, StoreSettings


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


def store_settings(config: ExtractConfig) -> StoreSettings:
    return StoreSettings(window_seconds=config.window_seconds, min_window_seconds=config.min_window_seconds,
                         dtype=config.dtype)


def decode_settings(encoder: MertEncoder, config: ExtractConfig) -> DecodeSettings:
    rate = encoder.sample_rate
    return DecodeSettings(
        sample_rate=rate,
        window_samples=int(round(config.window_seconds * rate)),
        min_last_samples=max(encoder.geometry.receptive_field, int(round(config.min_window_seconds * rate))),
        min_samples=encoder.geometry.receptive_field,
    )


def pending_sources(store: FeatureStore, sources: list[ClipSource], retry_failed: bool) -> list[ClipSource]:
    """Sources not yet committed (failed ones too unless `retry_failed`)."""
    done = {r.clip_id for r in store.records() if r.status == "ok" or not retry_failed}
    return [s for s in sources if s.clip_id not in done]


def chunked(items: list[ClipSource], size: int) -> Iterator[list[ClipSource]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def run_local(config: ExtractConfig, encoder: MertEncoder | None = None) -> ExtractSummary:
    """Extract every pending clip of `config.input` into `config.store` on this machine."""
    sources = resolve_sources(config.input, config.audio_root or None)
    encoder = encoder or MertEncoder.load(config.mert, config.device, config.precision)
    store = FeatureStore.open_or_create(config.store, encoder.identity, store_settings(config))
    todo = pending_sources(store, sources, config.retry_failed)
    summary = ExtractSummary(store=config.store, inputs=len(sources), skipped=len(sources) - len(todo))
    settings = decode_settings(encoder, config)
    started = time.perf_counter()
    bar = tqdm(total=len(todo), unit="clip", disable=not config.progress, desc="extract", dynamic_ncols=True)

    def clip_done(result: ClipResult) -> None:
        bar.update(1)
        if result.ok:
            summary.windows += result.window_stacks.shape[0]
            summary.audio_seconds += result.duration
            bar.set_postfix(windows=summary.windows, failed=len(summary.failures), refresh=False)
        else:
            summary.failures.append((result.clip_id, result.reason))

    lookahead = max(2, 2 * config.workers + config.batch_size)
    stream = decode_stream(todo, settings, config.workers, lookahead)
    writes: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(1, thread_name_prefix="partition-writer") as writer:
        try:
            for part in chunked(todo, config.partition_size):
                results = encode_clips(encoder, islice(stream, len(part)), config.batch_size, on_clip_done=clip_done)
                while writes:  # at most one partition waits to be written while the next one encodes
                    writes.popleft().result()
                writes.append(writer.submit(store.write_partition, results))
                summary.processed += len(results)
                summary.ok += sum(r.ok for r in results)
            while writes:
                writes.popleft().result()
        finally:
            stream.close()
            bar.close()
    summary.seconds = time.perf_counter() - started
    store.refresh()
    summary.partitions = len(store.commits())
    summary.store_bytes = store.location.size_bytes()
    return summary
