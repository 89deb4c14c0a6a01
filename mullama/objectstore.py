"""How mullama talks to object storage: retries with backoff, timeouts, and one line when a request gives up.

Every S3 request (store, audio, manifests, indexes) goes through s3fs and botocore with the options of
`storage_options`: botocore's "standard" retry mode (throttling answers such as 503 SlowDown, 5xx, dropped
connections and timeouts are retried with exponential backoff and jitter), connect and read timeouts, and
s3fs's own retry of throttling and timeout errors around each call. Settings given in fsspec's
configuration (`FSSPEC_S3` in the environment) win key by key, so an endpoint, a longer timeout or more
attempts can be set on every node without code. A request that still fails becomes an `ObjectStoreError`:
one line naming the operation and the URL, and what to do.

`ObjectFolder` is the one way writers reach a folder, local or at a URL (the store's `Location`, captions,
QA pairs): whole-or-nothing writes, listings that see other writers' commits, removal, a probe before work.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mullama.durable import flush, owned_folder, sync_tree, temporary_name, write_atomic
from mullama.errors import MullamaError

S3_PROTOCOLS = ("s3", "s3a")
# botocore tries each request up to MAX_ATTEMPTS times (backoff: random up to 2^(attempt-1) s, at most 20 s, so
# up to about 70 s in all); s3fs runs a call that still ends in SlowDown or a timeout again, 5 runs in all.
# A HEAD answered 503 has no body to say SlowDown, so only botocore's attempts cover it: 8 attempts at a
# 30 % failure share leave 1 in 15,000 requests failing.
MAX_ATTEMPTS = 8
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "retries": {"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        "connect_timeout": 10,
        "read_timeout": 60,
    },
}
# Exceptions of the S3 client stack that are not OSErrors (botocore's connection errors, aiohttp's).
CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs")
# A removal racing another removal of the same tree fails at the first entry the other took; a few tries
# finish it (each try starts from what is left).
REMOVE_ATTEMPTS = 5


def protocol(url: str) -> str:
    return str(url).split("://", 1)[0].lower() if "://" in str(url) else "file"


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for `url`: mullama's retry and timeout defaults under the user's fsspec configuration
    (merged key by key, nested dicts included); empty for anything but S3."""
    if protocol(url) not in S3_PROTOCOLS:
        return {}
    options = copy.deepcopy(S3_DEFAULTS)
    for name in S3_PROTOCOLS:
        merge(options, fsspec.config.conf.get(name) or {})
    return options


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` written into `base`, descending into dicts present in both."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class ObjectStoreError(MullamaError):
    """An object-store request that failed after every retry (one line: the operation, the URL, the cause).
    Built by `request_failed`; its only argument is the message, so it crosses Ray's boundary intact."""


def request_failed(operation: str, url: str, error: BaseException) -> ObjectStoreError:
    cause = " ".join(str(error).split()) or type(error).__name__
    return ObjectStoreError(f"object store request failed after retries: {operation} {url}: {type(error).__name__}: "
                            f"{cause}; check the endpoint, credentials and network (FSSPEC_S3, AWS_*), then run "
                            "the same command again (committed work is kept)")


def is_request_failure(error: BaseException) -> bool:
    """An error of the request itself (network, throttling, server, permission), not an answer such as "no
    such key" or "already exists" that callers handle."""
    if isinstance(error, (FileNotFoundError, FileExistsError, MullamaError)):
        return False
    return isinstance(error, OSError) or type(error).__module__.split(".", 1)[0] in CLIENT_MODULES


@contextlib.contextmanager
def named_failure(operation: str, url: str) -> Iterator[None]:
    """Raise a request failure inside the block as an ObjectStoreError naming `operation` and `url`."""
    try:
        yield
    except Exception as error:
        if not is_request_failure(error):
            raise
        raise request_failed(operation, url, error) from None


class ObjectFolder:
    """A folder on a local disk or at any fsspec URL (s3://, gs://, memory://, file://), addressed by relative
    keys such as ``commits/p-1.json``: one code path for every writer, whichever the filesystem.

    Writes are whole or nothing: temp file + fsync + rename on a local disk, a single PUT on an object store
    (which has neither rename nor append, so writers commit new objects rather than growing old ones). On an
    object store every request is retried with backoff, and one that still fails raises `ObjectStoreError`
    naming the operation and the key's URL."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = str(url)
        self.storage_options = storage_options(self.url) if options is None else options
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def path(self, key: str = "") -> str:
        return f"{self.root}/{key}".rstrip("/") if key else self.root

    def url_of(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def request(self, operation: str, key: str) -> contextlib.AbstractContextManager:
        """Turn an object-store request that failed after its retries into one ObjectStoreError line."""
        return contextlib.nullcontext() if self.is_local else named_failure(operation, self.url_of(key))

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

    def remove_files(self, keys: list[str]) -> None:
        """Remove several files at once (object stores: bulk deletes); one already gone is not an error."""
        if not keys:
            return
        try:
            with self.request("DELETE", keys[0] if len(keys) == 1 else f"{keys[0]} and {len(keys) - 1} more"):
                self.fs.rm([self.path(key) for key in keys])
        except FileNotFoundError:  # a local disk stops at the first missing file: the rest one by one
            for key in keys:
                self.remove(key)

    def size_bytes(self) -> int:
        return sum(self.files_under("").values())

    def held(self, lock_name: str, what: str, busy: str) -> contextlib.AbstractContextManager:
        """One writer at a time in this folder for the block: on a local disk an advisory lock on `lock_name`
        (`busy` is the error when another process holds it; the kernel drops it when its holder dies). An
        object store has no locks: there, writers commit objects under names no other run uses and remove
        only the ones they read, so a second run at once repeats work but loses none."""
        return owned_folder(self.root, lock_name, what, busy) if self.is_local else contextlib.nullcontext()

    def is_file(self, key: str = "") -> bool:
        with self.request("HEAD", key):
            return bool(self.fs.isfile(self.fresh(key)))

    def check_writable(self, option: str) -> None:
        """Refuse, before any long work whose results go here, a folder that cannot take a new file: a probe
        is written and removed (local: the folder is created; permission bits alone miss read-only
        filesystems). An object store that cannot be reached ends in ObjectStoreError naming the request."""
        probe = os.path.basename(temporary_name("probe"))
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
            self.write_atomic(probe, b"")
            with self.request("DELETE", probe):
                self.fs.rm_file(self.path(probe))
        except FileNotFoundError as exc:
            where = "its bucket does not exist" if not self.is_local else exc.strerror or str(exc)
            raise MullamaError(f"{option} {self.url}: cannot write there ({where}); create it or choose "
                               "another") from None
        except OSError as exc:  # local: a file in the way, a read-only filesystem, no permission
            raise MullamaError(f"{option} {self.url}: cannot write there ({exc.strerror or exc}); choose a "
                               "writable folder") from None


def split_url(url: str) -> tuple[str, str]:
    """(the folder, the name) of a file's path or URL: the folder an `ObjectFolder` opens, the name its key."""
    if protocol(url) == "file" and "://" not in url:
        return os.path.dirname(os.path.abspath(url)), os.path.basename(os.path.abspath(url))
    folder, _, name = url.rstrip("/").rpartition("/")
    if not name or folder.endswith(":/"):
        raise MullamaError(f"{url} names no file inside a bucket; give bucket/path/name")
    return folder, name


def read_file(url: str) -> bytes:
    """The bytes of a local file or an object (an input a user named); FileNotFoundError and other OSErrors as
    `open` raises them, and an object-store request that fails after retries as ObjectStoreError."""
    folder, name = split_url(url)
    return ObjectFolder(folder).read_bytes(name)


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
