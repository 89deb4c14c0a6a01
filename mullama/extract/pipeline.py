"""The partition pipeline: reader -> mapper -> writer, the same code for the local runner and Ray actors.

The reader decodes clips in worker processes (or threads) ahead of the model, the mapper encodes
windows of equal length in batches, and the writer commits each partition to the store. Over several
partitions the look-ahead runs across partition boundaries and a partition is written while the next
one encodes, so the model never waits for audio or for the disk.
"""

from __future__ import annotations

import collections
import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mullama.encoder_identity import AUDIO
from mullama.extract.encoder import StackEncoder
from mullama.extract.mapper import encode_clips
from mullama.extract.plan import PartitionTask
from mullama.extract.reader import Decoder, decode_clip, decode_stream
from mullama.extract.summary import ClipOutcome, PartitionReport
from mullama.store import SILENCE_CLIP, ClipResult, FeatureStore


@dataclass(frozen=True)
class PipelineSettings:
    decode: Any  # the decoder's settings (audio windows, or an image or video processor)
    batch_size: int
    workers: int  # decoding processes (threads when `processes` is False); 0 decodes inline
    processes: bool = True  # Ray actors decode in threads: libsndfile, soxr, PyAV and hashlib release the GIL
    decoder: Decoder = decode_clip  # a module-level function: worker processes import it by name

    @property
    def lookahead(self) -> int:
        """Clips decoded ahead of the model: a full batch of windows, plus two clips per worker in flight."""
        return max(2, 2 * self.workers + self.batch_size)


class PartitionPipeline:
    """Encodes partitions with one encoder replica and commits them to one store.

    `before_commit(task)` runs just before a partition's commit record is written and may refuse it (a
    writer whose lease expired must not commit: gc may have collected its files).
    """

    def __init__(self, encoder: StackEncoder, store: FeatureStore, settings: PipelineSettings,
                 on_clip_done: Callable[[ClipResult], None] | None = None,
                 before_commit: Callable[[PartitionTask], None] | None = None):
        self.encoder, self.store, self.settings = encoder, store, settings
        self.on_clip_done, self.before_commit = on_clip_done, before_commit

    def run(self, tasks: Iterable[PartitionTask]) -> Iterator[PartitionReport]:
        """Process `tasks` in order, yielding each partition's report once it is committed. `tasks` may be
        lazy: the reader asks for the next task only when its look-ahead reaches it."""
        settings = self.settings
        started: collections.deque[PartitionTask] = collections.deque()

        def sources() -> Iterator:
            for task in tasks:
                started.append(task)
                yield from task.sources

        stream = decode_stream(sources(), settings.decode, settings.workers, settings.lookahead,
                               processes=settings.processes, decoder=settings.decoder)
        with ThreadPoolExecutor(1, thread_name_prefix="partition-writer") as writer:
            pending: Future[PartitionReport] | None = None
            try:
                for first in stream:  # the first clip of the next task: the reader has taken that task by now
                    task = started.popleft()
                    clips = itertools.chain([first], itertools.islice(stream, len(task.sources) - 1))
                    results = encode_clips(self.encoder, clips, settings.batch_size, on_clip_done=self.on_clip_done)
                    if pending is not None:  # at most one partition waits to be written while the next encodes
                        yield pending.result()
                    pending = writer.submit(self.write, task, results)
                if pending is not None:
                    yield pending.result()
            finally:
                stream.close()

    def process(self, task: PartitionTask) -> PartitionReport:
        """One partition, start to commit (what a Ray actor does per call)."""
        reports = list(self.run([task]))
        return reports[0] if reports else PartitionReport(task.partition_id, [])

    def write(self, task: PartitionTask, results: list[ClipResult]) -> PartitionReport:
        check = None if self.before_commit is None else (lambda: self.before_commit(task))
        self.store.write_partition(results, task.partition_id, encoder=self.encoder.identity,
                                   precision=self.encoder.precision, before_commit=check)
        return PartitionReport(task.partition_id, [ClipOutcome.of_result(r) for r in results])


def ensure_silence_stack(store: FeatureStore, encoder: StackEncoder, run_id: str,
                         before_commit: Callable[[], None] | None = None) -> None:
    """Cache the stack of 1 s of silence once per audio store: text-only training items use it as their audio
    (docs/prompt.md). Its partition belongs to the run that writes it, like any other."""
    if SILENCE_CLIP in store or encoder.identity.modality != AUDIO:
        return
    silence = np.zeros(encoder.sample_rate, dtype=np.float32)
    result = ClipResult(SILENCE_CLIP, "(1 s of digital silence)", duration=1.0,
                        window_stacks=encoder.encode([silence]))
    store.write_partition([result], f"{run_id}-special", encoder=encoder.identity, precision=encoder.precision,
                          before_commit=before_commit)
