"""Local-disk writes that survive a crash or power cut whole or not at all.

Every writer of the project goes through here: content is flushed to the device before the rename
that publishes it, and the folder holding the new name is flushed after it, so a published name
never points at missing data and never disappears again after a power cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import Iterator

from mullama.errors import MullamaError


def flush(path: str | Path) -> None:
    """Flush one file or folder (its entries) to the device."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(root: str | Path) -> None:
    """Flush every file and folder below `root` to the device, so that a record written after them
    (a commit, a checkpoint rename) can never outlive their contents."""
    for folder, _, names in os.walk(root):
        for name in [*names, "."]:
            flush(os.path.join(folder, name))


def publish(temporary: str | Path, final: str | Path) -> None:
    """Rename a fully written file or folder into place: its content is flushed first, its folder after."""
    if os.path.isdir(temporary):
        sync_tree(temporary)
    else:
        flush(temporary)
    os.replace(temporary, final)
    flush(os.path.dirname(os.path.abspath(final)))


def temporary_name(path: str | Path) -> str:
    """A hidden sibling of `path` that no other writer uses (readers skip names starting with '.')."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")


def write_atomic(path: str | Path, data: bytes) -> None:
    """Readers see either the old file (or none) or the whole new content: temp file, fsync, rename."""
    folder = os.path.dirname(os.fspath(path))
    os.makedirs(folder or ".", exist_ok=True)
    temp = temporary_name(path)
    with open(temp, "wb") as handle:
        handle.write(data)
    publish(temp, path)


def check_writable_folder(folder: str | Path, option: str) -> None:
    """Refuse a folder that cannot take a new file before any long work whose result goes there: a hidden probe
    file is created and removed (permission bits alone miss read-only filesystems, and root ignores them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MullamaError(f"{option}: folder {folder} does not exist")
    try:
        with open(temporary_name(folder / "probe"), "xb") as probe:
            os.remove(probe.name)
    except OSError as exc:
        raise MullamaError(f"{option}: cannot write into folder {folder} ({exc.strerror or exc}); choose a writable "
                           "folder") from None


@contextlib.contextmanager
def owned_folder(folder: str | Path, lock_name: str, what: str, busy: str) -> Iterator[Path]:
    """Create `folder` if needed and hold an advisory lock on `folder/lock_name` for the block, so that one
    process at a time writes there. The kernel drops the lock when the process dies, so a killed process
    never blocks the next one. `what` names the folder in errors; `busy` is the error when it is taken."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / lock_name, "a")
    except OSError as exc:  # a file in the way, a read-only filesystem...
        raise MullamaError(f"cannot write {what} {folder}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MullamaError(busy) from None
        yield folder


def append_lines(path: str | Path, data: bytes, what: str) -> None:
    """Append whole lines and fsync them (the file's folder too, when this creates the file): a killed writer
    leaves at most a torn last line, which its reader drops."""
    path = Path(path)
    created = not path.exists()
    try:
        with open(path, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise MullamaError(f"cannot write {what} to {path}: {exc.strerror or exc}") from None
    if created:
        flush(path.parent)
