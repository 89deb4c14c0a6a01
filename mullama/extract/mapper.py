"""Mapper stage: decoded clips -> per-window layer stacks, batching only windows of equal length.

MERT normalises its first conv layer over the whole input, so padding would change a shorter
window's features (docs/audio-encoder.md). Windows are therefore grouped by exact length: a group runs when it
reaches the batch size, or when too many windows wait (then the largest group runs, part-full).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import numpy as np

from mullama.extract.reader import DecodedClip
from mullama.store.partition import ClipResult


class Encoder(Protocol):
    def encode(self, windows: list[np.ndarray]) -> np.ndarray: ...


@dataclass
class _Pending:
    clip: int
    window: int
    audio: np.ndarray


class _ClipSlot:
    """Collects one clip's window stacks as batches complete."""

    def __init__(self, decoded: DecodedClip):
        self.decoded = decoded
        self.stacks: np.ndarray | None = None
        self.remaining = len(decoded.windows)
        self.reason = decoded.reason

    def result(self) -> ClipResult:
        decoded = self.decoded
        stacks = None if self.reason else self.stacks
        return ClipResult(decoded.source.clip_id, decoded.source.path, decoded.content_hash, decoded.duration,
                          stacks, self.reason, decoded.size, decoded.mtime_ns)


def encode_clips(encoder: Encoder, clips: Iterable[DecodedClip], batch_size: int, max_pending: int | None = None,
                 on_clip_done: Callable[[ClipResult], None] | None = None) -> list[ClipResult]:
    """Encode every window of `clips`; failures (decode or encoder) become failed ClipResults."""
    max_pending = max_pending or 4 * batch_size
    slots: list[_ClipSlot] = []
    buckets: dict[int, list[_Pending]] = {}
    waiting = 0

    def finish(slot: _ClipSlot) -> None:
        if on_clip_done is not None:
            on_clip_done(slot.result())

    def run(batch: list[_Pending]) -> None:
        try:
            stacks = encoder.encode([item.audio for item in batch])
        except Exception as exc:  # e.g. out of memory on a big batch: retry one window at a time
            if len(batch) > 1:
                for item in batch:
                    run([item])
                return
            slot = slots[batch[0].clip]
            if not slot.reason:
                slot.reason = f"encoder_error: {type(exc).__name__}: {exc}"
            stacks = None
        for position, item in enumerate(batch):
            slot = slots[item.clip]
            if stacks is not None and not slot.reason:
                if slot.stacks is None:
                    slot.stacks = np.empty((len(slot.decoded.windows),) + stacks.shape[1:], dtype=np.float32)
                slot.stacks[item.window] = stacks[position]
            slot.remaining -= 1
            if slot.remaining == 0:
                slot.decoded.windows = []  # free the audio
                finish(slot)

    for decoded in clips:
        slot = _ClipSlot(decoded)
        slots.append(slot)
        if slot.reason or not decoded.windows:
            slot.reason = slot.reason or "empty: no windows"
            finish(slot)
            continue
        for number, audio in enumerate(decoded.windows):
            bucket = buckets.setdefault(audio.shape[0], [])
            bucket.append(_Pending(len(slots) - 1, number, audio))
            waiting += 1
            if len(bucket) >= batch_size:
                waiting -= len(bucket)
                run(buckets.pop(audio.shape[0]))
            elif waiting > max_pending:
                largest = max(buckets, key=lambda length: len(buckets[length]))
                waiting -= len(buckets[largest])
                run(buckets.pop(largest))
    for length in list(buckets):
        run(buckets.pop(length))
    return [slot.result() for slot in slots]
