"""Where a store lives: a local folder or any fsspec URL (s3://, gs://, memory://, file://).

Zarr reads and writes the arrays; the few small JSON documents the store keeps beside them
(commit records) go through fsspec here, written atomically: temp file + rename on a local disk,
a single PUT on object stores.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterable

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from mullama.durable import flush, sync_tree, temporary_name, write_atomic
from mullama.objectstore import named_failure, storage_options

# A removal racing another removal of the same tree fails at the first entry the other took; a few tries
# finish it (each try starts from what is left).
REMOVE_ATTEMPTS = 5


class Location:
    """The root of one store, addressed by relative keys such as ``commits/p-1.json``.

    On an object store every request is retried with backoff (mullama/objectstore.py), and one that still
    fails raises `ObjectStoreError` naming the operation and the key's URL."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = storage_options(self.url) if options is None else options
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def path(self, key: str = "") -> str:
        return f"{self.root}/{key}".rstrip("/") if key else self.root

    def url_of(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def request(self, operation: str, key: str) -> contextlib.AbstractContextManager:
        """Turn an object-store request that failed after its retries into one ObjectStoreError line."""
        return contextlib.nullcontext() if self.is_local else named_failure(operation, self.url_of(key))

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store object for the whole location."""
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return NamedFailures(zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                                               read_only=read_only))

    def fresh(self, key: str = "") -> str:
        """The path of `key`, with any cached listing of it dropped: s3fs and gcsfs cache directory
        listings, and other writers' commits must be seen."""
        path = self.path(key)
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return path

    def exists(self, key: str = "") -> bool:
        with self.request("HEAD", key):
            return self.fs.exists(self.fresh(key))

    def read_bytes(self, key: str) -> bytes:
        with self.request("GET", key):
            return self.fs.cat_file(self.path(key))

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Several small files at once (concurrent requests on object stores)."""
        if not keys:
            return {}
        paths = [self.path(key) for key in keys]
        with self.request("GET", keys[0] if len(keys) == 1 else f"{keys[0]} and {len(keys) - 1} more"):
            found = self.fs.cat(paths, on_error="raise")
        return {key: found[path] for key, path in zip(keys, paths)}

    def write_atomic(self, key: str, data: bytes) -> None:
        """Write `key` so that readers see either nothing or the whole content."""
        target = self.path(key)
        if self.is_local:
            write_atomic(target, data)
        else:
            with self.request("PUT", key):
                self.fs.pipe_file(target, data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write `key` whole unless it exists; False when another writer created it first.

        Local disk: a hard link from a flushed temporary file (fails when the name exists). Object stores:
        a conditional PUT (`If-None-Match: *` on S3) through fsspec's mode="create".
        """
        target = self.path(key)
        if not self.is_local:
            try:
                with self.request("PUT (if none match)", key):
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
            with self.request("LIST", key):
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
            with self.request("LIST", key):
                entries = self.fs.ls(self.fresh(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def folders(self, key: str) -> list[str]:
        """Names of the folders directly under `key` (object stores: common prefixes); files are left out."""
        try:
            with self.request("LIST", key):
                entries = self.fs.ls(self.fresh(key), detail=True)
        except FileNotFoundError:
            return []
        return sorted(str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def files_under(self, key: str) -> dict[str, int]:
        """Relative key -> size for every file below `key`."""
        base = self.fresh(key)
        try:
            with self.request("LIST", key):
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
                with self.request("DELETE", key):
                    self.fs.rm(self.path(key), recursive=True)
                return
            except FileNotFoundError:
                continue

    def size_bytes(self) -> int:
        return sum(self.files_under("").values())


class NamedFailures(zarr.storage.WrapperStore):
    """A zarr store on an object store whose failed requests (after their retries) raise ObjectStoreError
    naming the chunk's URL, rather than an OSError that names nothing."""

    def url_of(self, key: str) -> str:
        return f"{self._store.fs.unstrip_protocol(self._store.path)}/{key}"

    def request(self, operation: str, key: str) -> contextlib.AbstractContextManager:
        return named_failure(operation, self.url_of(key))

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        with self.request("GET", key):
            return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        with self.request("GET", key_ranges[0][0] if key_ranges else ""):
            return await self._store.get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with self.request("HEAD", key):
            return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        with self.request("PUT", key):
            await self._store.set(key, value)

    async def delete(self, key: str) -> None:
        with self.request("DELETE", key):
            await self._store.delete(key)


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
