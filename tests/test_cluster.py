"""Extraction on a real three-node Ray cluster (tests/cluster.py: a head and two workers, one CPU each), the
audio and the store in an S3 bucket (moto's server): the store equals the local run's clip by clip. The
`cluster` marker holds the slower faults: a worker node killed mid-run, the driver killed and the command
run again, a node joining mid-run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
ray = pytest.importorskip("ray")

from mullama.extract.config import ExtractConfig  # noqa: E402
from mullama.extract.runner import run_local  # noqa: E402
from mullama.store import FeatureStore  # noqa: E402
from tests.cluster import REPO, MotoS3, actor_nodes, start_cluster  # noqa: E402
from tests.helpers import committed_clip_rows, write_tone  # noqa: E402

pytestmark = pytest.mark.timeout(400)
BUCKET = "s3://mullama-cluster"
WORKERS = ["w1", "w2"]


@pytest.fixture(scope="module")
def s3():
    import fsspec

    server = MotoS3().start()
    previous = fsspec.config.conf.get("s3")
    saved = {name: os.environ.get(name) for name in server.env}
    try:
        server.use_here()
        fsspec.filesystem("s3").mkdir(BUCKET)
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        fsspec.config.conf.pop("s3", None) if previous is None else fsspec.config.conf.__setitem__("s3", previous)


@pytest.fixture(scope="module")
def cluster(s3):
    nodes = start_cluster(WORKERS, s3.env)
    try:
        yield nodes
    finally:
        nodes.stop()


def clips_in_bucket(root: Path, prefix: str, count: int) -> tuple[Path, Path]:
    """`count` tones written locally and uploaded under BUCKET/prefix; (local manifest of their s3:// paths,
    local manifest of the same clips on disk) with the same clip ids."""
    import fsspec

    s3, remote_rows, local_rows = fsspec.filesystem("s3"), [], []
    for number in range(count):  # one window each, distinct lengths: results do not depend on batching
        local = write_tone(root / "audio" / f"c{number:02d}.wav", 0.8 + 0.07 * number, 44100, 90.0 + 13 * number,
                           seed=number)
        url = f"{BUCKET}/{prefix}/audio/{local.name}"
        s3.put_file(str(local), url)
        remote_rows.append({"clip_id": local.stem, "path": url})
        local_rows.append({"clip_id": local.stem, "path": str(local)})
    return write_rows(root / "s3.csv", remote_rows), write_rows(root / "local.csv", local_rows)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["clip_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def extract_command(manifest: Path, mert: Path, store: str, address: str, actors: int = 3) -> list[str]:
    return [sys.executable, "-m", "mullama.cli", "extract", str(manifest), "--mert", str(mert), "--store", store,
            "--ray", address, "--actors", str(actors), "--actor-cpus", "1", "--partition-size", "2",
            "--decode-threads", "1", "--no-progress"]


def driver_env(s3: MotoS3) -> dict[str, str]:
    return {**os.environ, **s3.env, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}


def local_reference(manifest: Path, mert: Path, store: Path) -> FeatureStore:
    run_local(ExtractConfig(input=str(manifest), mert=str(mert), store=str(store), workers=0, progress=False,
                            partition_size=2))
    return FeatureStore.open(str(store))


def assert_same_clips(left: FeatureStore, right: FeatureStore) -> None:
    """Clip by clip: the same ids, content hashes, durations and stacks (float16's last bit aside)."""
    ids = sorted(right.clip_ids())
    assert sorted(left.clip_ids()) == ids
    for clip_id in ids:
        mine, theirs = left.record(clip_id), right.record(clip_id)
        assert (mine.content_hash, mine.duration, mine.windows) == (theirs.content_hash, theirs.duration,
                                                                   theirs.windows), clip_id
    np.testing.assert_allclose(left.get(ids).astype(np.float32), right.get(ids).astype(np.float32),
                               rtol=2e-3, atol=2e-3)


def test_extract_on_three_nodes_from_s3_equals_the_local_run(cluster, s3, tmp_path, tiny_mert):
    remote, local = clips_in_bucket(tmp_path, "equal", 6)
    store = f"{BUCKET}/equal/store"
    run = subprocess.run(extract_command(remote, tiny_mert, store, cluster.address), env=driver_env(s3),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    on_cluster = FeatureStore.open(store)
    assert committed_clip_rows(on_cluster) == 6 and on_cluster.verify() == []
    assert_same_clips(on_cluster, local_reference(local, tiny_mert, tmp_path / "local-store"))
    placed = actor_nodes("mullama-extract-")
    assert sorted(placed.values()) == ["head", "w1", "w2"], placed  # one actor per node, by the CPUs asked
