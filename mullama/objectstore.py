"""How mullama talks to object storage: retries with backoff, timeouts, and one line when a request gives up.

Every S3 request (store, audio, manifests, indexes) goes through s3fs and botocore with the options of
`storage_options`: botocore's "standard" retry mode (throttling answers such as 503 SlowDown, 5xx, dropped
connections and timeouts are retried with exponential backoff and jitter), connect and read timeouts, and
s3fs's own retry of throttling and timeout errors around each call. Settings given in fsspec's
configuration (`FSSPEC_S3` in the environment) win key by key, so an endpoint, a longer timeout or more
attempts can be set on every node without code. A request that still fails becomes an `ObjectStoreError`:
one line naming the operation and the URL, and what to do.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import fsspec

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
