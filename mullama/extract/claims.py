"""Sharing a store with other writers: this run's part of the clips, in rounds.

Two jobs started on the same input and store (a scheduler retrying, two people, two clusters) must
not both extract everything. Each run claims the clips it planned (mullama.store.writers). Clips
claimed by a live writer that started earlier are left to that writer, checked again before every
partition, so work done twice is bounded by the partitions in flight when a second writer appears.
When a run's own part is done it waits for the clips other live writers still hold and takes over
those whose writer died: a run that ends without error leaves every clip of its input committed,
which is what a job scheduler's "succeeded" should mean. Waiting, not skipping, is the choice for
scheduled jobs: a downstream step that starts on success then never finds clips missing.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator

from mullama.data.manifest import ClipSource
from mullama.extract.plan import ExtractionPlan, PartitionTask, chunked
from mullama.store.writers import ClaimBook, WriterLease


class SharedWork:
    """Hands out this run's partitions and says, after each round, which clips are left."""

    def __init__(self, plan: ExtractionPlan, lease: WriterLease):
        self.plan, self.lease = plan, lease
        self.book = ClaimBook(plan.store.location, lease.lease)
        self.handed_out: set[str] = set()
        self.index = 0
        self.initial_partitions = {commit.partition for commit in plan.store.commits()}
        lease.claim(source.clip_id for source in plan.todo)

    def tasks(self, sources: list[ClipSource], partition_size: int) -> Iterator[PartitionTask]:
        """Partitions of `sources` minus what earlier live writers claim and what others committed since this
        run planned, looked at again per partition. Claims are read before commits: a writer commits before
        it drops its lease, so a clip is either still claimed or already committed when it is looked at."""
        for chunk in chunked(sources, partition_size):
            taken = self.book.taken_by_earlier_writers()
            self.plan.store.refresh()
            part = [source for source in chunk if source.clip_id not in taken and not self.committed_since(source)]
            if not part:
                continue
            self.handed_out.update(source.clip_id for source in part)
            yield PartitionTask(self.index, part, self.plan.run_id)
            self.index += 1

    def committed_since(self, source: ClipSource) -> bool:
        """Committed (ok or failed) by anyone after this run planned."""
        record = self.plan.store.records_by_id().get(source.clip_id)
        return record is not None and record.partition not in self.initial_partitions

    def remaining(self, on_wait: Callable[[int], None] | None = None) -> list[ClipSource]:
        """The next round's clips: planned clips nobody has committed since this run started, that no live
        earlier writer holds any more. Empty when everything is committed; waits while others hold clips."""
        store = self.plan.store
        while True:
            taken = self.book.taken_by_earlier_writers()  # before the commits, as in tasks()
            store.refresh()
            pending = [source for source in self.plan.todo
                       if source.clip_id not in self.handed_out and not self.committed_since(source)]
            if not pending:
                return []
            free = [source for source in pending if source.clip_id not in taken]
            if free:
                return free
            if on_wait is not None:
                on_wait(len(pending))
            time.sleep(max(1.0, self.lease.seconds / 12))
