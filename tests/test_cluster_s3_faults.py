"""`mullama extract --ray ADDRESS` on a real three-node cluster (tests/cluster.py) whose every S3 request, the
driver's and every actor's, goes through the fault proxy (tests/s3_faults.py): with a fifth of the requests
answered 503 SlowDown and some held past the read timeout, the run completes and its store equals the local
run's clip by clip. Under the `cluster` marker (`-m cluster`)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("ray")

import fsspec  # noqa: E402

from mullama.store import FeatureStore  # noqa: E402
from tests.cluster import CREDENTIALS, REPO, MotoS3, start_cluster  # noqa: E402
from tests.helpers import committed_clip_rows  # noqa: E402
from tests.s3_faults import Fault, FaultProxy  # noqa: E402
from tests.test_cluster import (BUCKET, WORKERS, assert_same_clips, clips_in_bucket, extract_command,  # noqa: E402
                                local_reference, only_when_selected)
from tests.test_s3_faults import use  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.cluster, only_when_selected]
# The nodes' patience: a loaded 2-core machine answers slowly, so the read timeout is 3 s and a held request
# waits 4 s; botocore's attempts stay mullama's default.
NODE_RETRIES = {"config_kwargs": {"read_timeout": 3.0}}


def s3_env(endpoint: str) -> dict[str, str]:
    return {**CREDENTIALS, "FSSPEC_S3": json.dumps({"client_kwargs": {"endpoint_url": endpoint}, **NODE_RETRIES})}


@pytest.fixture(scope="module")
def faulty_cluster():
    """moto behind the fault proxy, and a head and two workers whose S3 requests go through the proxy."""
    server = MotoS3().start()
    proxy = FaultProxy(server.endpoint).start()
    previous, saved = fsspec.config.conf.get("s3"), {name: os.environ.get(name) for name in CREDENTIALS}
    nodes = None
    try:
        os.environ.update(CREDENTIALS)
        use(proxy, NODE_RETRIES)
        fsspec.filesystem("s3").mkdir(BUCKET)
        nodes = start_cluster(WORKERS, s3_env(proxy.endpoint))
        yield nodes, proxy
    finally:
        if nodes is not None:
            nodes.stop()
        proxy.stop()
        server.stop()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        fsspec.config.conf.pop("s3", None) if previous is None else fsspec.config.conf.__setitem__("s3", previous)


def test_extract_on_three_nodes_through_slow_downs_and_timeouts_equals_the_local_run(faulty_cluster, tmp_path,
                                                                                      tiny_mert):
    """Of the requests for the audio, the partitions' chunks and the commit records, by the actors and the
    driver, 20 % answered 503 SlowDown and 5 % held 4 s (past the nodes' 3 s read timeout): the run retries,
    completes with exit 0, every clip once, and the store equals the local run's. (Every request kind, the
    leases' and claims' too, at these shares costs minutes of backoff on this machine; the store's own
    request kinds are tested at 30 % in tests/test_s3_faults.py.)"""
    cluster, proxy = faulty_cluster
    proxy.set(Fault())
    remote, local = clips_in_bucket(tmp_path, "faults", 6)
    store = f"{BUCKET}/faults/store"
    proxy.set(Fault(slow_down=0.2, delayed=0.05, delay=4.0, key=r"/audio/|/c/|/commits", seed=11))
    run = subprocess.run(extract_command(remote, tiny_mert, store, cluster.address),
                         env={**os.environ, **s3_env(proxy.endpoint), "PYTHONPATH": str(REPO),
                              "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=540)
    faults = dict(proxy.counts)
    proxy.set(Fault())
    assert run.returncode == 0, run.stdout + run.stderr
    assert sum(n for kind, n in faults.items() if kind.startswith("slow_down")) >= 5, faults
    assert sum(n for kind, n in faults.items() if kind.startswith("delay")) >= 1, faults
    result = FeatureStore.open(store)
    assert committed_clip_rows(result) == 6 and result.verify() == [], "every clip once, none lost"
    assert_same_clips(result, local_reference(local, tiny_mert, tmp_path / "local-store"))
