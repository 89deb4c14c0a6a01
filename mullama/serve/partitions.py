"""A partition of a captioning run: its clips captioned in seeded batches and written as one part (file or object).

Shared by the local runner and the Ray actors (mullama/serve/caption.py, ray_caption.py), so that both write
the same captions for the same partition.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from mullama.objectstore import ObjectFolder
from mullama.store.feature_store import FeatureStore
from mullama.store.stacks import ClipStacks


@dataclass
class CaptionPlan:
    """What a run captions and how; a resumed run must find the same plan in the parts folder."""

    settings: dict[str, Any]
    order: list[str]  # clips in output order
    partitions: list[list[str]]  # clips in captioning order, cut into units of work

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def catalog_fields(store: FeatureStore, clip: str) -> dict[str, Any]:
    record = store.record(clip)
    return {"source": record.source, "duration": record.duration, "windows": record.windows}


def caption_partition(model: Any, store: FeatureStore, clips: list[str], number: int, settings: dict[str, Any],
                      done: Callable[[int], None] = lambda clips: None) -> list[dict[str, Any]]:
    """Caption one partition: its clips' stacks in batches of `batch_size`, each seeded from (seed, partition,
    batch); a clip answered on several windows gets its captions joined, as the paper did. `done` hears how
    many clips each batch finished."""
    source = ClipStacks(store, settings["protocol"])
    stacks: list[np.ndarray] = []
    owners: list[int] = []
    used: list[list[int]] = []
    for position, clip in enumerate(clips):
        clip_stacks, windows = source.of(clip)
        stacks += clip_stacks
        owners += [position] * len(clip_stacks)
        used.append(windows)
    parts: list[list[str]] = [[] for _ in clips]
    size = settings["batch_size"]
    for start in range(0, len(stacks), size):
        seed = zlib.crc32(f"{settings['seed']}/{number}/{start}".encode())
        answers = model.answer_batch(np.stack(stacks[start:start + size]), [settings["question"]] *
                                     len(stacks[start:start + size]), temperature=settings["temperature"],
                                     top_p=settings["top_p"], max_new_tokens=settings["max_new_tokens"], seed=seed)
        for owner, answer in zip(owners[start:start + size], answers):
            parts[owner].append(answer)
        end = min(start + size, len(stacks))
        done(len(set(owners[start:end])) - (end < len(stacks) and owners[end] == owners[end - 1]))
    return [{"clip_id": clip, "question": settings["question"], "caption": " ".join(parts[i]),
             "caption_windows": used[i], **catalog_fields(store, clip)} for i, clip in enumerate(clips)]


def part_key(number: int) -> str:
    return f"part-{number:05d}.jsonl"


def write_part(parts: ObjectFolder, number: int, rows: list[dict[str, Any]]) -> None:
    """One partition's captions, put whole (a local temp file renamed, or one object PUT)."""
    parts.write_atomic(part_key(number), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
