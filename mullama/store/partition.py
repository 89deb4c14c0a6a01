"""Writing one partition: the unit of work and of commit.

A writer owns its partition outright (no other writer touches its chunks), writes every array,
checksums what it wrote, and only then writes the commit record. A partition without a commit
record is invisible to readers and its clips are redone by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import zarr

from mullama import __version__
from mullama.store.location import Location
from mullama.store.schema import STATUS_FAILED, ClipRecord, CommitRecord

PARTITIONS = "partitions"
COMMITS = "commits"
# Rows per inner chunk. Reads of one row cost the same for 1 to 16-row chunks (uncompressed, partial
# shard reads), while whole-partition reads run ~4x faster with 16 (benchmarks/extract_throughput.py).
CHUNK_ROWS = 16
# That measurement was of MERT-330M rows (25 x 1024 float16, 51 KB: 16 rows are 0.8 MB). An image's token
# matrix is 6x that row and a video's 94x (197 or 3137 x 768), so a chunk takes at most this many bytes' worth of
# rows (at least one): reading one video never reads fifteen others.
CHUNK_BYTES = 1 << 20


@dataclass
class ClipResult:
    """An encoded (or failed) clip on its way into a partition."""

    clip_id: str
    source: str
    content_hash: str = ""
    duration: float = 0.0
    window_stacks: np.ndarray | None = None  # (windows, L+1, H) float32; None when failed
    reason: str = ""
    size: int = -1  # of the source file when it was read (-1: not a local file)
    mtime_ns: int = -1

    @property
    def ok(self) -> bool:
        return self.window_stacks is not None


def partition_key(partition_id: str) -> str:
    return f"{PARTITIONS}/{partition_id}"


def commit_key(partition_id: str) -> str:
    return f"{COMMITS}/{partition_id}.json"


def file_digest(location: Location, key: str) -> str:
    return hashlib.sha256(location.read_bytes(key)).hexdigest()


def _create(group: zarr.Group, name: str, data: np.ndarray, row_chunks: bool) -> None:
    """One shard per array (few files), small uncompressed inner chunks (fast single-clip reads).

    float16 embeddings barely compress (zstd ~1.1x), so compression would only slow reads. Chunks of
    zeros (the silence stack) are written too, so every array's data is a committed, checksummed file.
    """
    config = {"write_empty_chunks": True}
    if row_chunks:
        row_bytes = data[:1].nbytes or 1
        rows = max(1, min(CHUNK_ROWS, data.shape[0], CHUNK_BYTES // row_bytes))
        chunks = (rows,) + data.shape[1:]
        shards = (-(-data.shape[0] // rows) * rows,) + data.shape[1:]  # one shard holding every row
        array = group.create_array(name, shape=data.shape, chunks=chunks, shards=shards,
                                   dtype=data.dtype, compressors=None, config=config)
    else:
        array = group.create_array(name, shape=data.shape, chunks=data.shape, dtype=data.dtype, compressors=None,
                                   config=config)
    array[...] = data


def write_partition(location: Location, partition_id: str, results: list[ClipResult], dtype: str,
                    stamp: dict[str, Any], before_commit: Callable[[], None] | None = None,
                    windowed: bool = True) -> CommitRecord:
    """Write the arrays of `results` under partitions/<id>, then commit them.

    `windowed` False (image and video stores: one matrix per item) writes no window_stacks: an item's only
    "window" is its clip row, and a second copy would double the store.

    `stamp` (the writer's encoder identity and settings) goes into the commit record, so verify can tell
    a partition written by another encoder. `before_commit` may refuse the commit (a lost writer lease).
    """
    records: list[ClipRecord] = []
    window_arrays: list[np.ndarray] = []
    clip_arrays: list[np.ndarray] = []
    window_start = 0
    for result in results:
        record = ClipRecord(result.clip_id, result.source, result.content_hash, result.size, result.mtime_ns,
                            round(result.duration, 6), partition=partition_id)
        if result.ok:
            stacks = result.window_stacks
            record.windows, record.window_start, record.row = int(stacks.shape[0]), window_start, len(clip_arrays)
            if windowed:
                window_arrays.append(stacks.astype(dtype))
            elif stacks.shape[0] != 1:
                raise ValueError(f"clip {result.clip_id}: {stacks.shape[0]} windows in a store of one matrix per item")
            clip_arrays.append(stacks.astype(np.float32).mean(axis=0).astype(dtype))
            window_start += stacks.shape[0]
        else:
            record.status, record.reason = STATUS_FAILED, result.reason
        records.append(record)

    group = zarr.open_group(store=location.zarr_store(), path=partition_key(partition_id), mode="w")
    group.attrs["mullama"] = {"partition": partition_id, "clip_ids": [r.clip_id for r in records if r.row >= 0]}
    if clip_arrays:
        _create(group, "clip_stacks", np.stack(clip_arrays), row_chunks=True)
        if window_arrays:
            _create(group, "window_stacks", np.concatenate(window_arrays), row_chunks=True)
        offsets = np.array([0] + [r.windows for r in records if r.row >= 0], dtype=np.int64).cumsum()
        _create(group, "window_offsets", offsets, row_chunks=False)

    location.sync(partition_key(partition_id))
    files = {key: {"size": size, "sha256": file_digest(location, key)}
             for key, size in sorted(location.files_under(partition_key(partition_id)).items())}
    commit = CommitRecord(
        partition=partition_id,
        sequence=time.time_ns(),
        committed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        writer=f"{socket.gethostname()}:{os.getpid()}",
        mullama_version=__version__,
        clips=records,
        rows=len(clip_arrays),
        window_rows=window_start if windowed else 0,
        files=files,
        encoder=stamp["encoder"],
        settings=stamp["settings"],
    )
    if before_commit is not None:
        before_commit()
    location.write_atomic(commit_key(partition_id), json.dumps(commit.to_dict(), indent=1).encode())
    return commit

