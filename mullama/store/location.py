"""Where a store lives: a local folder or any fsspec URL (s3://, gs://, memory://, file://).

Zarr reads and writes the arrays; the few small JSON documents the store keeps beside them
(commit records) go through `ObjectFolder` (mullama/objectstore.py), written atomically: temp file +
rename on a local disk, a single PUT on object stores.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import zarr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from mullama.objectstore import ObjectFolder, named_failure


class Location(ObjectFolder):
    """The root of one store, addressed by relative keys such as ``commits/p-1.json``; its arrays through zarr."""

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store object for the whole location."""
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return NamedFailures(zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                                               read_only=read_only))


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
