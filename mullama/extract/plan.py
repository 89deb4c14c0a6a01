"""Planning an extraction: which store to write, which clips it still lacks, and the partitions
(the unit of work and of commit) that the local runner and the Ray actors process alike."""

from __future__ import annotations

import os
import stat
import time
import uuid
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterator

from mullama.data.manifest import ClipSource, is_url, resolve_sources
from mullama.errors import MullamaError
from mullama.extract.audio import content_hash
from mullama.extract.config import ExtractConfig
from mullama.extract.encoder import EncoderSpec
from mullama.extract.kinds import kind_of_option
from mullama.extract.reader import Decoder
from mullama.extract.summary import ExtractSummary
from mullama.store import ClipRecord, FeatureStore, StoreSettings
from mullama.store.feature_store import RESERVED_PREFIX
from mullama.store.schema import STATUS_OK


@dataclass(frozen=True)
class PartitionTask:
    """The clips of one partition. A retry gets a new attempt number, hence a new partition id, so a
    half-written attempt (even one a zombie writer still holds) never shares a chunk with the retry."""

    index: int
    sources: list[ClipSource]
    run_id: str
    attempt: int = 0

    @property
    def partition_id(self) -> str:
        return f"{self.run_id}-{self.index:05d}-a{self.attempt}"

    def retry(self) -> "PartitionTask":
        return PartitionTask(self.index, self.sources, self.run_id, self.attempt + 1)


@dataclass
class ExtractionPlan:
    """What a run must do: the store to write, the clips still missing from it, how to decode them."""

    store: FeatureStore
    todo: list[ClipSource]
    decode: Any  # the encoder kind's decode settings (audio windows, an image or video processor)
    decoder: Decoder  # the reader's function from a source and `decode` to encoder inputs
    summary: ExtractSummary
    run_id: str

    def tasks(self, partition_size: int) -> list[PartitionTask]:
        parts = chunked(self.todo, partition_size)
        return [PartitionTask(index, part, self.run_id) for index, part in enumerate(parts)]

    def finish(self, started: float) -> ExtractSummary:
        """The summary, completed with the run's time and the store's size as committed now."""
        summary = self.summary
        summary.seconds = time.perf_counter() - started
        self.store.refresh()
        summary.partitions = len(self.store.commits())
        summary.store_bytes = self.store.location.size_bytes()
        return summary


def chunked(items: list[ClipSource], size: int) -> Iterator[list[ClipSource]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def new_run_id() -> str:
    return f"r{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def read_spec(config: ExtractConfig) -> EncoderSpec:
    """What the one encoder folder of `config` is (any registered kind), without loading it."""
    option, folder = config.encoder_folder()
    return kind_of_option(option).read(folder)


def check_clip_ids(sources: list[ClipSource], input_path: str) -> None:
    """Ids under the store's reserved prefix would replace the clips the store keeps for itself (the
    silence stack of text-only training items)."""
    reserved = [s.clip_id for s in sources if s.clip_id.startswith(RESERVED_PREFIX)]
    if reserved:
        raise MullamaError(f"input {input_path}: clip id {reserved[0]!r} uses the prefix {RESERVED_PREFIX!r} that "
                           f"the store reserves for itself ({len(reserved)} such id(s)); rename those clips")


def source_changed(record: ClipRecord, source: ClipSource) -> bool:
    """A committed clip whose source file now holds other audio: same size and mtime means unchanged (cheap);
    otherwise the content hash decides, so a file that was only touched is not extracted again. Sources
    behind URLs and files that vanished are not checked."""
    if is_url(source.path) or source.problem:
        return False
    try:
        status = os.stat(source.path)
    except OSError:
        return False
    if not stat.S_ISREG(status.st_mode):  # a FIFO or device: hashing it would never end
        return False
    if record.source == source.path and (record.size, record.mtime_ns) == (status.st_size, status.st_mtime_ns):
        return False
    try:
        return content_hash(source.path) != record.content_hash
    except OSError:
        return False


def plan_extraction(config: ExtractConfig, spec: EncoderSpec, precision: str) -> ExtractionPlan:
    """Open (or create) the store for this encoder and list the clips not committed yet, or whose source
    changed since it was committed (their new rows supersede the old ones)."""
    settings = spec.store_settings(StoreSettings(window_seconds=config.window_seconds, dtype=config.dtype,
                                                 min_window_seconds=config.min_window_seconds, precision=precision))
    spec.check_settings(settings)
    decode = spec.decode_settings(settings)
    sources = resolve_sources(config.input, config.audio_root or None, spec.suffixes)
    check_clip_ids(sources, config.input)
    store = FeatureStore.open_or_create(config.store, spec.identity, settings)
    todo, changed = [], 0
    for source in sources:
        record = store.records_by_id().get(source.clip_id)
        if record is None or (record.status != STATUS_OK and config.retry_failed):
            todo.append(source)
        elif source_changed(record, source):
            todo.append(source)
            changed += 1
    summary = ExtractSummary(store=config.store, inputs=len(sources), skipped=len(sources) - len(todo),
                             changed=changed, modality=spec.identity.modality)
    return ExtractionPlan(store, todo, decode, spec.decoder, summary, new_run_id())
