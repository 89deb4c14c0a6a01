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

from mullama.distribute import Retries, WorkerFactory, WorkerPool  # noqa: E402
from mullama.extract.config import ExtractConfig  # noqa: E402
from mullama.extract.runner import run_local  # noqa: E402
from mullama.store import FeatureStore  # noqa: E402
from tests.cluster import MotoS3, actor_places, driver_env, redone_tasks, running_cluster, serving_s3  # noqa: E402
from tests.helpers import committed_clip_rows, write_tone  # noqa: E402

pytestmark = pytest.mark.timeout(400)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
BUCKET = "s3://mullama-cluster"
WORKERS = ["w1", "w2"]
# A fault case runs when asked for (`-m cluster`): each kills nodes or drivers for one to three minutes.
only_when_selected = pytest.mark.skipif("'cluster' not in (config.option.markexpr or '')",
                                        reason="a cluster fault case: run with -m cluster")


@pytest.fixture(scope="module")
def s3():
    with serving_s3(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(s3):
    with running_cluster(WORKERS, s3.env) as nodes:
        yield nodes


def clips_in_bucket(root: Path, prefix: str, count: int) -> tuple[str, Path]:
    """`count` tones written locally and uploaded under BUCKET/prefix; (the manifest in the bucket, paths
    relative to it, and a local manifest of the same clips on disk), the same clip ids in both."""
    import fsspec

    s3, remote_rows, local_rows = fsspec.filesystem("s3"), [], []
    for number in range(count):  # one window each, distinct lengths: results do not depend on batching
        local = write_tone(root / "audio" / f"c{number:02d}.wav", 0.8 + 0.07 * number, 44100, 90.0 + 13 * number,
                           seed=number)
        url = f"{BUCKET}/{prefix}/audio/{local.name}"
        s3.put_file(str(local), url)
        remote_rows.append({"clip_id": local.stem, "path": f"audio/{local.name}"})
        local_rows.append({"clip_id": local.stem, "path": str(local)})
    s3.put_file(str(write_rows(root / "s3.csv", remote_rows)), f"{BUCKET}/{prefix}/clips.csv")
    return f"{BUCKET}/{prefix}/clips.csv", write_rows(root / "local.csv", local_rows)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["clip_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def extract_command(manifest: str, mert: Path, store: str, address: str, actors: int = 3) -> list[str]:
    return [sys.executable, "-m", "mullama.cli", "extract", manifest, "--mert", str(mert), "--store", store,
            "--ray", address, "--actors", str(actors), "--actor-cpus", "1", "--partition-size", "2",
            "--decode-threads", "1", "--no-progress"]


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
    placed = actor_places("mullama-extract-")
    assert sorted(actor.node for actor in placed) == ["head", "w1", "w2"], placed  # one per node, by the CPUs asked


def data_commits(store: str) -> list[str]:
    """The store's commits of clip partitions (the silence stack's special one aside)."""
    import fsspec

    s3 = fsspec.filesystem("s3")
    s3.invalidate_cache()
    try:
        names = s3.ls(f"{store}/commits", detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return [name for name in names if name.endswith(".json") and "special" not in name]


def wait_for_a_commit(store: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not data_commits(store):
        if process.poll() is not None or time.time() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            raise AssertionError(f"no partition committed before the fault (rc {process.poll()}): {output}")
        time.sleep(0.3)


def start_extract(command: list[str], s3: MotoS3) -> subprocess.Popen:
    return subprocess.Popen(command, env=driver_env(s3), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.cluster
@only_when_selected
def test_the_driver_killed_and_the_command_run_again_continues(cluster, s3, tmp_path, tiny_mert):
    remote, local = clips_in_bucket(tmp_path, "driver", 24)
    store = f"{BUCKET}/driver/store"
    command = extract_command(remote, tiny_mert, store, cluster.address)
    process = start_extract(command, s3)
    wait_for_a_commit(store, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.time() + 120  # Ray ends the dead driver's actors; none may write while the rerun plans
    while any(actor.state != "DEAD" for actor in actor_places("mullama-extract-")):
        assert time.time() < deadline, actor_places("mullama-extract-")
        time.sleep(0.5)
    partial = FeatureStore.open(store)
    committed = len(partial)
    assert 0 < committed < 24 and partial.verify() == []
    again = subprocess.run(command, env=driver_env(s3), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    complete = FeatureStore.open(store)
    assert committed_clip_rows(complete) == 24 and complete.verify() == [], "every clip once"
    assert_same_clips(complete, local_reference(local, tiny_mert, tmp_path / "local-store"))


@pytest.mark.cluster
@only_when_selected
def test_a_worker_node_killed_mid_run_the_run_completes_and_an_actor_moves_to_a_joining_node(cluster, s3, tmp_path,
                                                                                            tiny_mert):
    """After the first commit w3 joins and w1 is SIGKILLed: the partitions w1's actor held are redone on
    surviving nodes under new ids (the run's lines say so), every clip once, and an actor of the run lands on
    w3: the one the pool starts for a joining node, or w1's restarted by Ray, whichever takes w3's one CPU
    first. That a joining node's actor then gets work is shown, without a race, by the distributor's case
    below and by tests/test_cluster_commands.py."""
    remote, local = clips_in_bucket(tmp_path, "node", 60)
    store = f"{BUCKET}/node/store"
    process = start_extract(extract_command(remote, tiny_mert, store, cluster.address), s3)
    wait_for_a_commit(store, process)
    cluster.start("w3")
    cluster.wait_alive(["w3"])
    ids = cluster.ids()
    cluster.kill("w1")
    output, _ = process.communicate(timeout=360)
    assert process.returncode == 0, output
    complete = FeatureStore.open(store)
    assert committed_clip_rows(complete) == 60 and complete.verify() == [], "every clip once, none lost"
    assert_same_clips(complete, local_reference(local, tiny_mert, tmp_path / "local-store"))
    partitions = [commit.partition for commit in complete.commits()]
    assert any(not name.endswith("-a0") for name in partitions), f"a lost partition redone: {partitions}"
    lost = [task for task in redone_tasks(output) if ids["w1"] in task.lost_on]
    assert lost and all(task.done_on in set(ids.values()) - {ids["w1"]} for task in lost), output
    places = actor_places("mullama-extract-")
    assert any(actor.node == "w3" for actor in places), places


class NodeReporter:
    """Answers a task with (task, the name of the node it ran on), after a second's work."""

    def run(self, task: int) -> tuple[int, str]:
        time.sleep(1.0)
        here = ray.get_runtime_context().get_node_id()
        names = [key[5:] for node in ray.nodes() if node["NodeID"] == here for key in node["Resources"]
                 if key.startswith("node_")]
        return task, (names or ["?"])[0]


@pytest.mark.cluster
@only_when_selected
def test_the_distributor_moves_a_lost_nodes_work_and_a_joining_node_receives_work(cluster):
    """Through mullama/distribute.py itself (no model to load, so the timing is the distributor's): w4 joins
    and w2 is SIGKILLed after a few results; every task comes back exactly once, and the actor on w4 (the
    pool's own for a joining node, or w2's restarted by Ray) gets tasks (the source keeps drawing until it
    has, or two minutes pass)."""
    results: list[tuple[int, str]] = []

    def tasks():
        number, deadline = 0, time.time() + 120
        while number < 12 or (not any(node == "w4" for _, node in results) and time.time() < deadline):
            yield number
            number += 1

    factory = WorkerFactory(NodeReporter, count=3, cpus=1.0, name_prefix=f"cluster-join-{os.getpid()}",
                            label="test", tasks_in_flight=2)
    with WorkerPool(factory) as pool:
        for done in pool.run(tasks(), lambda actor, task: actor.run.remote(task), Retries(4)):
            assert done.error is None, done.error
            results.append(done.result)
            if len(results) == 4:
                cluster.start("w4")
                cluster.wait_alive(["w4"])
                cluster.kill("w2")
    numbers = sorted(number for number, _ in results)
    assert numbers == list(range(len(numbers))), "every task once, none lost"
    assert "w4" in {node for _, node in results}, results
