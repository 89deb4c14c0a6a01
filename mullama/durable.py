"""Local-disk writes that survive a crash or power cut whole or not at all."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def sync_tree(root: str | Path) -> None:
    """Flush every file and folder below `root` to the device, so that a record written after them
    (a commit, a checkpoint rename) can never outlive their contents."""
    for folder, _, names in os.walk(root):
        for name in [*names, "."]:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Readers see either the old file (or none) or the whole new content: temp file, fsync, rename."""
    folder, name = os.path.split(os.fspath(path))
    os.makedirs(folder or ".", exist_ok=True)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
