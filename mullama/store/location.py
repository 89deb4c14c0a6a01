"""Where a store lives: a local folder or any fsspec URL (s3://, gs://, memory://, file://).

Zarr reads and writes the arrays; the few small JSON documents the store keeps beside them
(commit records) go through fsspec here, written atomically: temp file + rename on a local disk,
a single PUT on object stores.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from mullama.durable import flush, sync_tree, temporary_name, write_atomic

# A removal racing another removal of the same tree fails at the first entry the other took; a few tries
# finish it (each try starts from what is left).
REMOVE_ATTEMPTS = 5


class Location:
    """The root of one store, addressed by relative keys such as ``commits/p-1.json``."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = storage_options or {}
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, key: str = "") -> str:
        return f"{self.root}/{key}".rstrip("/") if key else self.root

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store object for the whole location."""
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options, read_only=read_only)

    def fresh(self, key: str = "") -> str:
        """The path of `key`, with any cached listing of it dropped: s3fs and gcsfs cache directory
        listings, and other writers' commits must be seen."""
        path = self.path(key)
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return path

    def exists(self, key: str = "") -> bool:
        return self.fs.exists(self.fresh(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Several small files at once (concurrent requests on object stores)."""
        if not keys:
            return {}
        paths = [self.path(key) for key in keys]
        found = self.fs.cat(paths, on_error="raise")
        return {key: found[path] for key, path in zip(keys, paths)}

    def write_atomic(self, key: str, data: bytes) -> None:
        """Write `key` so that readers see either nothing or the whole content."""
        target = self.path(key)
        if self.is_local:
            write_atomic(target, data)
        else:
            self.fs.pipe_file(target, data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write `key` whole unless it exists; False when another writer created it first.

        Local disk: a hard link from a flushed temporary file (fails when the name exists). Object stores:
        a conditional PUT (`If-None-Match: *` on S3) through fsspec's mode="create".
        """
        target = self.path(key)
        if not self.is_local:
            try:
                self.fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                return False
            return True
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temp = temporary_name(target)
        with open(temp, "wb") as handle:
            handle.write(data)
        flush(temp)  # the content is on the device before its name appears
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        flush(os.path.dirname(target))
        return True

    def modified(self, key: str) -> float | None:
        """Newest modification time (epoch seconds) of the files below `key`; None when there are none."""
        base = self.fresh(key)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return None
        times = [_epoch(info) for info in found.values() if info.get("type", "file") == "file"]
        return max((t for t in times if t is not None), default=None)

    def sync(self, key: str) -> None:
        """On a local disk, flush everything below `key` (object-store PUTs are durable already)."""
        if self.is_local:
            sync_tree(self.path(key))

    def list(self, key: str) -> list[str]:
        """Names directly under `key` (empty if it does not exist)."""
        try:
            entries = self.fs.ls(self.fresh(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def folders(self, key: str) -> list[str]:
        """Names of the folders directly under `key` (object stores: common prefixes); files are left out."""
        try:
            entries = self.fs.ls(self.fresh(key), detail=True)
        except FileNotFoundError:
            return []
        return sorted(str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def files_under(self, key: str) -> dict[str, int]:
        """Relative key -> size for every file below `key`."""
        base = self.fresh(key)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.root + "/"
        return {name[len(prefix):] if name.startswith(prefix) else name: int(info.get("size") or 0)
                for name, info in found.items() if info.get("type", "file") == "file"}

    def remove(self, key: str) -> None:
        """Remove a file or folder; another process removing it at the same time is not an error (a writer's
        exit and `store gc` can both delete an ended lease), so a removal cut short by that is tried again."""
        for _ in range(REMOVE_ATTEMPTS):
            if not self.exists(key):
                return
            try:
                self.fs.rm(self.path(key), recursive=True)
                return
            except FileNotFoundError:
                continue

    def size_bytes(self) -> int:
        return sum(self.files_under("").values())


def _epoch(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time, whatever the filesystem calls it."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None
