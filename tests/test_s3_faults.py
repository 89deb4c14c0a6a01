"""The object store misbehaving (tests/s3_faults.py: a proxy in front of moto's S3 server answering a share of
the requests 503 SlowDown or too late): mullama's requests are retried with backoff and the store comes out
byte for byte as without faults; a request that fails every time ends the command with one line naming the
request, and no partition it half-wrote is taken for whole."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

import fsspec  # noqa: E402

from mullama.objectstore import ObjectStoreError, storage_options  # noqa: E402
from mullama.store import FeatureStore  # noqa: E402
from tests.cluster import CREDENTIALS, REPO, MotoS3  # noqa: E402
from tests.helpers import synthetic_store  # noqa: E402
from tests.s3_faults import Fault, FaultProxy  # noqa: E402

BUCKET = "s3://mullama-faults"
# mullama's own retry settings with a read timeout short enough for the proxy's delays to count as timeouts;
# and, for the requests that fail every time, two attempts, so that they give up in seconds, not minutes.
PATIENT = {"config_kwargs": {"read_timeout": 1.0}}
IMPATIENT = {"config_kwargs": {"retries": {"max_attempts": 2}, "read_timeout": 1.0}}


def s3_config(endpoint: str, retries: dict = IMPATIENT) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, **retries}


def use(proxy: FaultProxy, retries: dict) -> None:
    """This process's S3 requests go through `proxy` with `retries` over mullama's defaults."""
    fsspec.config.conf["s3"] = s3_config(proxy.endpoint, retries)
    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def faulty_s3(bucket: str) -> Iterator[FaultProxy]:
    """moto's server behind the fault proxy with `bucket` made, this process's fsspec talking to the proxy, and
    all of it undone on exit (a module fixture's body)."""
    server = MotoS3().start()
    faults = FaultProxy(server.endpoint).start()
    previous, saved = fsspec.config.conf.get("s3"), {name: os.environ.get(name) for name in CREDENTIALS}
    try:
        os.environ.update(CREDENTIALS)
        use(faults, PATIENT)
        fsspec.filesystem("s3").mkdir(bucket)
        yield faults
    finally:
        faults.stop()
        server.stop()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        fsspec.config.conf.pop("s3", None) if previous is None else fsspec.config.conf.__setitem__("s3", previous)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def proxy():
    """moto's server behind the fault proxy; this process's fsspec talks to the proxy."""
    with faulty_s3(BUCKET) as faults:
        yield faults


def partition_digests(store: FeatureStore) -> list[dict[str, str]]:
    """Each partition's files (name inside the partition -> sha256 taken at commit), in commit order; the
    partition group's own zarr.json is left out, since it names the partition (a new id per store)."""
    return [{key.split("/", 2)[-1]: entry["sha256"] for key, entry in commit.files.items()
             if key.split("/", 2)[-1] != "zarr.json"}
            for commit in sorted(store.commits(), key=lambda commit: commit.sequence)]


def test_mullamas_s3_options_retry_with_backoff_and_the_users_settings_win_key_by_key(monkeypatch):
    monkeypatch.setitem(fsspec.config.conf, "s3", {"config_kwargs": {"retries": {"max_attempts": 9}},
                                                   "client_kwargs": {"endpoint_url": "http://minio:9000"}})
    options = storage_options("s3://bucket/store")
    assert options["config_kwargs"]["retries"] == {"mode": "standard", "max_attempts": 9}
    assert options["config_kwargs"]["read_timeout"] > 0 and options["config_kwargs"]["connect_timeout"] > 0
    assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000"}
    assert storage_options("/local/store") == {} and storage_options("memory://x") == {}


def test_a_store_written_and_read_through_30_percent_slow_downs_and_timeouts_is_byte_identical(proxy):
    """Of the requests for the partitions' chunks and the commit records (PUT, GET, HEAD, LIST), 20 % are
    answered 503 SlowDown and 10 % held past the 1 s read timeout (then carried out: the retry repeats a PUT
    that landed): two partitions written, listed and read back equal the same partitions written without
    faults, file by file. mullama's own retry settings, only the read timeout shortened. (Every request
    kind at 30 % works as well, but each failure costs a backoff of about half a second.)"""
    use(proxy, PATIENT)
    proxy.set(Fault())
    clean = synthetic_store(f"{BUCKET}/clean", clips=4, per_partition=2)
    proxy.set(Fault(slow_down=0.2, delayed=0.1, delay=1.5, key=r"/c/|/commits", seed=7))
    faulty = synthetic_store(f"{BUCKET}/faulty", clips=4, per_partition=2)
    reopened = FeatureStore.open(f"{BUCKET}/faulty")
    ids = sorted(clean.clip_ids())
    assert sorted(reopened.clip_ids()) == ids and reopened.verify() == [] and faulty.verify() == []
    assert reopened.get(ids).tobytes() == FeatureStore.open(f"{BUCKET}/clean").get(ids).tobytes()
    assert partition_digests(reopened) == partition_digests(clean)
    faults = {kind: sum(n for name, n in proxy.counts.items() if name.startswith(kind)) for kind in ("slow", "delay")}
    assert faults["slow"] >= 5 and faults["delay"] >= 2, proxy.counts


def test_a_chunk_put_failing_every_time_names_the_request_and_commits_nothing(proxy):
    use(proxy, IMPATIENT)
    proxy.set(Fault())
    store = synthetic_store(f"{BUCKET}/half", clips=3, per_partition=3)
    proxy.set(Fault(slow_down=1.0, method="PUT", key=r"/partitions/.*/c/"))
    with pytest.raises(ObjectStoreError) as failure:
        synthetic_store(f"{BUCKET}/half", clips=3, per_partition=3, start=3)
    message = str(failure.value)
    assert message.startswith(f"object store request failed after retries: PUT {BUCKET}/half/partitions/")
    assert "/c/" in message and "reduce your request rate" in message, message
    assert "\n" not in message
    assert str(pickle.loads(pickle.dumps(failure.value))) == message, "it crosses Ray's boundary whole"
    proxy.set(Fault())
    after = FeatureStore.open(f"{BUCKET}/half")
    assert sorted(after.clip_ids()) == sorted(store.clip_ids()), "the half-written partition is not taken"
    assert after.verify() == []


def test_the_cli_says_in_one_line_which_request_failed(proxy, tmp_path):
    """`mullama store info` on a store whose every GET fails: exit 2, one line naming the GET, no traceback."""
    proxy.set(Fault())
    synthetic_store(f"{BUCKET}/info", clips=2, per_partition=2)
    proxy.set(Fault(slow_down=1.0, method="GET"))
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO), "FSSPEC_S3": json.dumps(s3_config(proxy.endpoint))}
    run = subprocess.run([sys.executable, "-m", "mullama.cli", "store", "info", f"{BUCKET}/info"], env=env,
                         capture_output=True, text=True, timeout=300)
    proxy.set(Fault())
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: object store request failed after retries: GET {BUCKET}/info/"), lines
    assert "run the same command again" in lines[0]


def test_an_unreachable_endpoint_is_one_line_too(tmp_path):
    """Nothing listens at the endpoint: the connection errors are retried, then one line, exit 2."""
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO),
           "FSSPEC_S3": json.dumps(s3_config("http://127.0.0.1:9"))}
    run = subprocess.run([sys.executable, "-m", "mullama.cli", "store", "info", f"{BUCKET}/nowhere"], env=env,
                         capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error: object store request failed after retries: HEAD {BUCKET}/nowhere/zarr.json")


def test_the_proxy_fails_the_same_requests_for_the_same_seed():
    fault = Fault(slow_down=0.3, delayed=0.1, seed=3)
    first = [fault.decide(number) for number in range(200)]
    assert first == [fault.decide(number) for number in range(200)]
    assert 40 < first.count("slow_down") < 80 and 5 < first.count("delay") < 40
    share = np.mean([Fault(slow_down=0.3, seed=4).decide(n) == "slow_down" for n in range(2000)])
    assert share == pytest.approx(0.3, abs=0.04)
