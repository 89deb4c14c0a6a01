"""The partition pipeline: reader -> mapper -> writer, the same code for the local runner and Ray actors.

The reader decodes clips in worker processes (or threads) ahead of the model, the mapper encodes
windows of equal length in batches, and the writer commits each partition to the store. Over several
partitions the look-ahead runs across partition boundaries and a partition is written while the next
one encodes, so the model never waits for audio or for the disk.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterator, Sequence

import numpy as np

from mullama.extract.mapper import Encoder, encode_clips
from mullama.extract.plan import PartitionTask
from mullama.extract.reader import DecodeSettings, decode_stream
from mullama.extract.summary import ClipOutcome, PartitionReport
from mullama.store import SILENCE_CLIP, ClipResult, FeatureStore


@dataclass(frozen=True)
class PipelineSettings:
    decode: DecodeSettings
    batch_size: int
    workers: int  # decoding processes (threads when `processes` is False); 0 decodes inline
    processes: bool = True  # Ray actors decode in threads: libsndfile, soxr and hashlib release the GIL

    @property
    def lookahead(self) -> int:
        """Clips decoded ahead of the model: a full batch of windows, plus two clips per worker in flight."""
        return max(2, 2 * self.workers + self.batch_size)


class PartitionPipeline:
    """Encodes partitions with one encoder replica and commits them to one store."""

    def __init__(self, encoder: Encoder, store: FeatureStore, settings: PipelineSettings,
                 on_clip_done: Callable[[ClipResult], None] | None = None):
        self.encoder, self.store, self.settings = encoder, store, settings
        self.on_clip_done = on_clip_done

    def run(self, tasks: Sequence[PartitionTask]) -> Iterator[PartitionReport]:
        """Process `tasks` in order, yielding each partition's report once it is committed."""
        settings = self.settings
        sources = (source for task in tasks for source in task.sources)
        stream = decode_stream(sources, settings.decode, settings.workers, settings.lookahead,
                               processes=settings.processes)
        with ThreadPoolExecutor(1, thread_name_prefix="partition-writer") as writer:
            pending: Future[PartitionReport] | None = None
            try:
                for task in tasks:
                    results = encode_clips(self.encoder, islice(stream, len(task.sources)), settings.batch_size,
                                           on_clip_done=self.on_clip_done)
                    if pending is not None:  # at most one partition waits to be written while the next encodes
                        yield pending.result()
                    pending = writer.submit(self.write, task, results)
                if pending is not None:
                    yield pending.result()
            finally:
                stream.close()

    def process(self, task: PartitionTask) -> PartitionReport:
        """One partition, start to commit (what a Ray actor does per call)."""
        (report,) = self.run([task])
        return report

    def write(self, task: PartitionTask, results: list[ClipResult]) -> PartitionReport:
        self.store.write_partition(results, task.partition_id)
        return PartitionReport(task.partition_id, [ClipOutcome.of_result(r) for r in results])


def ensure_silence_stack(store: FeatureStore, encoder: Encoder, sample_rate: int) -> None:
    """Cache the stack of 1 s of silence once per store: text-only training items use it as their audio
    (docs/prompt.md)."""
    if SILENCE_CLIP in store:
        return
    silence = np.zeros(sample_rate, dtype=np.float32)
    result = ClipResult(SILENCE_CLIP, "(1 s of digital silence)", duration=1.0,
                        window_stacks=encoder.encode([silence]))
    store.write_partition([result], store.new_partition_id(prefix="special"))
