"""Index build, captioning and QA generation on a real three-node Ray cluster (tests/cluster.py: a head and
two workers, one CPU each), the store in an S3 bucket (moto's server): each equals its local run. The
`cluster` marker holds the faults, one command each: a node joining mid-run does work (its own actor, the
others paused) and is then SIGKILLed holding a task (the driver's lines show that task redone on a surviving
node, every task done once, the result the local run's) and the driver SIGKILLed mid-run and the same command
run again (it continues from what was committed; an index build, which commits once, starts again and never
takes the killed build's files for an index).

Outputs: an index lives in the bucket beside the store; captions and QA pairs are written by the driver (the
actors only compute) into the bucket too, as committed parts first and the whole file at the end. The helpers
below read outputs through fsspec, so a case may give a local path as well.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
ray = pytest.importorskip("ray")

from mullama.config import build_config  # noqa: E402
from mullama.data.qagen.config import QaGenerateConfig  # noqa: E402
from mullama.data.qagen.qa_pairs import write_qa_pairs  # noqa: E402
from mullama.errors import MullamaError  # noqa: E402
from mullama.knn import ClipIndex  # noqa: E402
from mullama.knn.build import build_index  # noqa: E402
from mullama.knn.config import IndexBuildConfig  # noqa: E402
from mullama.model import MusicLlama  # noqa: E402
from mullama.serve.caption import run_caption  # noqa: E402
from mullama.serve.config import CaptionConfig  # noqa: E402
from tests.cluster import (MotoS3, PausedActors, RayNodes, actor_places, driver_env, redone_tasks,  # noqa: E402
                           running_cluster, serving_s3, tasks_by_node, wait_until_dead)
from tests.helpers import synthetic_store  # noqa: E402

pytestmark = pytest.mark.timeout(600)
BUCKET = "s3://mullama-commands"
STORE = f"{BUCKET}/store"
WORKERS = ["w1", "w2"]
INDEX_TYPE = "IVF8,SQ8"  # trained: the Ray tasks encode into copies of the driver's trained empty index
only_when_selected = pytest.mark.skipif("'cluster' not in (config.option.markexpr or '')",
                                        reason="a cluster fault case: run with -m cluster")
spare_names = (f"spare{number}" for number in itertools.count())


@pytest.fixture(scope="module")
def s3():
    with serving_s3(BUCKET) as server:
        synthetic_store(STORE, clips=480, per_partition=20)  # 24 partitions of random stacks, no audio
        yield server


@pytest.fixture(scope="module")
def cluster(s3):
    with running_cluster(WORKERS, s3.env) as nodes:
        yield nodes


def mullama(*args: str) -> list[str]:
    return [sys.executable, "-m", "mullama.cli", *args, "--no-progress"]


def run_driver(command: list[str], s3: MotoS3, exit_code: int = 0) -> tuple[int, str]:
    """Run a command to its end: (its process id, which names its actors; its output)."""
    process = start_driver(command, s3)
    output, _ = process.communicate(timeout=420)
    assert process.returncode == exit_code, output
    return process.pid, output


def start_driver(command: list[str], s3: MotoS3) -> subprocess.Popen:
    return subprocess.Popen(command, env=driver_env(s3), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(progress, process: subprocess.Popen, what: str, describe=lambda: "", timeout: float = 300,
             poll: float = 0.2) -> None:
    """Block until `progress()` is true: the run has committed something, and is still running. A failure says
    what `describe()` saw last (where the actors were)."""
    deadline = time.time() + timeout
    while not progress():
        if process.poll() is not None or time.time() > deadline:
            output = process.communicate()[0] if process.poll() is not None else ""
            raise AssertionError(f"no {what} before the fault (rc {process.poll()}; {describe()}): {output}")
        time.sleep(poll)


@dataclass(frozen=True)
class NodeFaults:
    """What `join_and_lose_a_node` did: the Ray node id of the node that joined and was then killed, and the
    ids of every node alive before the kill (name -> id)."""

    joined: str
    before: dict[str, str]


ACTORS = 3  # every run here starts three actors (--ray-actors 3; an index build, one per CPU)


def join_and_lose_a_node(cluster: RayNodes, process: subprocess.Popen, prefix: str, progress, what: str,
                         total: int) -> NodeFaults:
    """Mid-run (its actors up, each holding its task): the run's actors are paused as they come up (SIGSTOP),
    so that a node joining must make progress (`progress()` tasks of `total` done) through its own actor
    alone; once it has, that actor is paused too, holding its next task, the node SIGKILLed and the others
    resume. Timing no longer decides the test: without the pauses, actors start slower here than the first
    one up finishes the work (a QA batch of the tiny model takes a fraction of a second)."""
    describe = lambda: actor_places(prefix)  # noqa: E731
    paused, joined = PausedActors(prefix), next(spare_names)
    try:
        wait_for(lambda: paused.catch_up() or len(paused.pids) >= ACTORS, process, "actors of the run up", describe)
        time.sleep(2)  # results sent before the pause land
        assert progress() < total // 2, "the run is far from done"
        cluster.start(joined)
        up_there = lambda: [actor.pid for actor in actor_places(prefix)  # noqa: E731
                            if actor.state == "ALIVE" and actor.node == joined]
        wait_for(up_there, process, f"an actor on {joined}", describe)
        [newcomer], start = up_there(), progress()
        # polled tightly: a QA batch of the tiny model takes a fraction of a second, and the joined actor must
        # be paused while tasks are left for it to hold
        wait_for(lambda: progress() > start, process, f"{what} on {joined} alone", describe, poll=0.005)
        paused.pause(newcomer)
        assert progress() <= total - ACTORS - 1, "a task left for the joined node's actor to hold"
        ids = cluster.ids()
        cluster.kill(joined)
    finally:
        paused.resume()
    return NodeFaults(ids[joined], ids)


def assert_redone_elsewhere_and_joined_worked(output: str, faults: NodeFaults, tasks: int) -> None:
    """The distributor's lines: the joined node did tasks, a task was lost with it and redone on a node alive
    before the kill, and every task was done once."""
    lost = [task for task in redone_tasks(output) if faults.joined in task.lost_on]
    assert lost, f"no task lost with the killed node {faults.joined}: {output}"
    survivors = set(faults.before.values()) - {faults.joined}
    assert all(task.done_on in survivors for task in lost), (lost, faults)
    done = tasks_by_node(output)
    assert sum(done.values()) == tasks, f"every task done once: {done}"
    assert done.get(faults.joined, 0) >= 1, f"the joined node did no task: {done}, {faults}"


def kill_driver(process: subprocess.Popen, prefix: str) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    wait_until_dead(prefix)  # no actor of the killed run may still work while the rerun plans


def assert_spread(prefix: str) -> None:
    """The run's three actors ran on three nodes (each node has its own `node_<name>` resource)."""
    placed = actor_places(prefix)
    assert len(placed) == 3 and len({actor.node for actor in placed}) == 3, placed


# --------------------------------------------------------------------- index build
def index_command(name: str, address: str, tasks: int) -> list[str]:
    return mullama("index", "build", STORE, "--name", name, "--type", INDEX_TYPE, "--ray", address,
                   "--ray-tasks", str(tasks))


@pytest.fixture(scope="module")
def local_index(s3) -> ClipIndex:
    build_index(IndexBuildConfig(store=STORE, name="local", type=INDEX_TYPE, progress=False))
    return ClipIndex.open(STORE, "local")


def assert_same_index(index: ClipIndex, local: ClipIndex) -> None:
    """The same quantiser, codes and row order as the local build, and the same clip behind every row."""
    read = lambda built: built.folder.location.read_bytes(built.metadata.index_file["key"])  # noqa: E731
    assert read(index) == read(local)
    assert index.clips == local.clips and len(index.clips) == 480, "every clip once"


def index_segments(name: str) -> int:
    import fsspec

    s3 = fsspec.filesystem("s3")
    s3.invalidate_cache()
    return len(s3.glob(f"{STORE}/indexes/{name}/segments/*/clips.jsonl"))


def test_index_built_on_three_nodes_in_s3_equals_the_local_build(cluster, s3, local_index):
    pid, _ = run_driver(index_command("three", cluster.address, 3), s3)
    on_cluster = ClipIndex.open(STORE, "three")
    assert len(on_cluster.metadata.segments) == 3
    assert_same_index(on_cluster, local_index)
    assert_spread(f"mullama-index-{pid}-")


@pytest.mark.cluster
@only_when_selected
def test_index_build_a_joining_node_works_and_its_loss_is_redone_elsewhere(cluster, s3, local_index):
    process = start_driver(index_command("node", cluster.address, 24), s3)
    faults = join_and_lose_a_node(cluster, process, f"mullama-index-{process.pid}-", lambda: index_segments("node"),
                                  "index segment", 24)
    output, _ = process.communicate(timeout=420)
    assert process.returncode == 0, output
    on_cluster = ClipIndex.open(STORE, "node")
    assert len(on_cluster.metadata.segments) == 24
    assert_same_index(on_cluster, local_index)
    assert_redone_elsewhere_and_joined_worked(output, faults, 24)


@pytest.mark.cluster
@only_when_selected
def test_index_build_driver_killed_leaves_no_index_and_the_rerun_builds_it(cluster, s3, local_index):
    """A build commits once (index.json last): a killed one leaves segments no index.json names, the rerun
    (no --overwrite needed, as there is no index) builds it whole under a new generation."""
    command = index_command("driver", cluster.address, 12)
    process = start_driver(command, s3)
    wait_for(lambda: index_segments("driver") > 0, process, "index segment")
    kill_driver(process, f"mullama-index-{process.pid}-")
    with pytest.raises(MullamaError, match="has no index named 'driver'"):
        ClipIndex.open(STORE, "driver")
    debris = index_segments("driver")
    run_driver(command, s3)
    rebuilt = ClipIndex.open(STORE, "driver")
    assert len(rebuilt.metadata.segments) == 12 and index_segments("driver") >= debris
    assert_same_index(rebuilt, local_index)


# --------------------------------------------------------------------- captioning
CAPTION_CLIPS = 48  # enough work that a node is lost mid-run even when the actors start late


@pytest.fixture(scope="module")
def caption_inputs(s3, tiny_llama, tmp_path_factory) -> dict[str, str]:
    """The adapter and LLaMA (local folders every node of this machine sees) and a clip list of the store."""
    from mullama.store import FeatureStore

    root = tmp_path_factory.mktemp("caption")
    store = FeatureStore.open(STORE)
    adapter = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=2).save(root / "adapter")
    (root / "clips.txt").write_text("".join(f"clip{n:05d}\n" for n in range(CAPTION_CLIPS)))
    return {"store": STORE, "adapter": str(adapter), "llama": str(tiny_llama), "clips": str(root / "clips.txt"),
            "max_new_tokens": "6", "batch_size": "2", "partition_size": "2", "device": "cpu"}


@pytest.fixture(scope="module")
def local_captions(caption_inputs, tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("local-captions") / "captions.jsonl"
    report = run_caption(build_config(CaptionConfig, {**caption_inputs, "out": str(out), "progress": False}))
    assert report.captioned_now == CAPTION_CLIPS and not report.failed
    return out.read_text().splitlines()


def caption_command(inputs: dict[str, str], out: str | Path, address: str) -> list[str]:
    options = [item for name, value in inputs.items() for item in (f"--{name.replace('_', '-')}", value)]
    return mullama("caption", *options, "--out", str(out), "--ray", address, "--ray-actors", "3")


def committed(out: str | Path, folder: str) -> dict[str, bytes]:
    """The committed parts (part-*.jsonl) of `folder` beside or inside `out`, a local path or an s3:// URL."""
    fs, root = fsspec.core.url_to_fs(f"{out}{folder}")
    fs.invalidate_cache()
    paths = [path for path in (fs.ls(root, detail=False) if fs.exists(root) else [])
             if path.rsplit("/", 1)[-1].startswith("part-")]
    return fs.cat(paths) if paths else {}


def read_lines(url: str | Path) -> list[str] | None:
    """The lines of an output file (a local path or an s3:// URL); None when it is not there."""
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    return fs.cat_file(path).decode().splitlines() if fs.isfile(path) else None


def parts_written(out: str | Path) -> int:
    return len(committed(out, ".parts"))


def s3_out(tmp_path: Path, name: str) -> str:
    """An output in the bucket, one per test."""
    return f"{BUCKET}/outputs/{tmp_path.name}/{name}"


@pytest.mark.cluster
@only_when_selected
def test_captions_on_three_nodes_from_s3_equal_the_local_run_line_by_line(cluster, s3, caption_inputs,
                                                                        local_captions, tmp_path):
    out = s3_out(tmp_path, "captions.jsonl")
    pid, _ = run_driver(caption_command(caption_inputs, out, cluster.address), s3)
    assert read_lines(out) == local_captions
    assert_spread(f"mullama-caption-{pid}-")  # half a CPU each: Ray's default would pack two on a node


@pytest.mark.cluster
@only_when_selected
def test_captioning_a_joining_node_works_and_its_loss_is_redone_elsewhere(cluster, s3, caption_inputs,
                                                                          local_captions, tmp_path):
    out = tmp_path / "captions.jsonl"
    process = start_driver(caption_command(caption_inputs, out, cluster.address), s3)
    faults = join_and_lose_a_node(cluster, process, f"mullama-caption-{process.pid}-", lambda: parts_written(out),
                                  "caption part", CAPTION_CLIPS // 2)
    output, _ = process.communicate(timeout=420)
    assert process.returncode == 0, output
    assert out.read_text().splitlines() == local_captions, "every clip once, none lost, the same captions"
    assert_redone_elsewhere_and_joined_worked(output, faults, CAPTION_CLIPS // 2)


@pytest.mark.cluster
@only_when_selected
def test_captioning_driver_killed_and_run_again_continues_from_its_parts(cluster, s3, caption_inputs,
                                                                         local_captions, tmp_path):
    out = s3_out(tmp_path, "captions.jsonl")
    command = caption_command(caption_inputs, out, cluster.address)
    process = start_driver(command, s3)
    wait_for(lambda: parts_written(out) > 0, process, "caption part")
    kill_driver(process, f"mullama-caption-{process.pid}-")
    assert read_lines(out) is None
    kept = parts_written(out)
    _, output = run_driver(command, s3)
    resumed = int(output.split("from an earlier run: ")[1].split()[0])
    assert resumed >= 2 * kept > 0, output
    assert read_lines(out) == local_captions


# --------------------------------------------------------------------- QA generation
QA_CLIPS = 90  # 45 batches: on a quiet machine the first actors up did 10 before the third was up
QA_SOURCE = f"{BUCKET}/qa-source/tags.jsonl"


@pytest.fixture(scope="module")
def qa_source(s3, tmp_path_factory) -> Path:
    """The tags file on local disk (for the local run) and the same bytes in the bucket (QA_SOURCE)."""
    source = tmp_path_factory.mktemp("qa") / "tags.jsonl"
    source.write_text("".join(json.dumps({"clip_id": f"c{n:02d}", "tags": ["piano", f"t{n}"]}) + "\n"
                              for n in range(QA_CLIPS)))
    fsspec.filesystem("s3").pipe_file(QA_SOURCE, source.read_bytes())
    return source


QA_OPTIONS = {"max_attempts": "1", "max_new_tokens": "5", "batch_size": "2", "device": "cpu"}


@pytest.fixture(scope="module")
def local_qa(qa_source, tiny_llama, tmp_path_factory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("local-qa")
    write_qa_pairs(build_config(QaGenerateConfig, {"source": str(qa_source), "out": str(out), "llm": str(tiny_llama),
                                                   "progress": False, **QA_OPTIONS}))
    return qa_files(out)


def qa_files(out: str | Path) -> dict[str, list[str]]:
    """qa.jsonl and failures.jsonl as written (in the source's order, however the batches finished), each clip
    once."""
    files = {name: read_lines(f"{out}/{name}") or [] for name in ("qa.jsonl", "failures.jsonl")}
    clips = [json.loads(line)["clip_id"] for lines in files.values() for line in lines]
    assert sorted(clips) == [f"c{n:02d}" for n in range(QA_CLIPS)], "every clip once, in one of the two files"
    return files


def qa_command(source: str | Path, llm: Path, out: str | Path, address: str) -> list[str]:
    options = [item for name, value in QA_OPTIONS.items() for item in (f"--{name.replace('_', '-')}", value)]
    return mullama("qa", "generate", str(source), "--out", str(out), "--llm", str(llm), *options, "--ray", address,
                   "--ray-actors", "3")


def qa_lines(out: str | Path) -> int:
    """Rows of the batches committed so far (parts of qa.jsonl and failures.jsonl)."""
    return sum(data.count(b"\n") for name in ("qa.jsonl", "failures.jsonl")
               for data in committed(out, f"/{name}.parts").values())


@pytest.mark.cluster
@only_when_selected
def test_qa_generation_on_three_nodes_equals_the_local_run(cluster, s3, qa_source, tiny_llama, local_qa, tmp_path):
    """Random weights: no answer parses, so every clip is a failure row holding the model's seeded output;
    those rows (and the empty qa.jsonl) equal the local run's."""
    out = s3_out(tmp_path, "qa")
    pid, _ = run_driver(qa_command(QA_SOURCE, tiny_llama, out, cluster.address), s3, exit_code=1)
    assert qa_files(out) == local_qa
    assert_spread(f"mullama-qa-{pid}-")


@pytest.mark.cluster
@only_when_selected
def test_qa_generation_a_joining_node_works_and_its_loss_is_redone_elsewhere(cluster, s3, qa_source, tiny_llama,
                                                                             local_qa, tmp_path):
    out = tmp_path / "qa"
    process = start_driver(qa_command(qa_source, tiny_llama, out, cluster.address), s3)
    faults = join_and_lose_a_node(cluster, process, f"mullama-qa-{process.pid}-", lambda: qa_lines(out) // 2,
                                  "QA batch", QA_CLIPS // 2)
    output, _ = process.communicate(timeout=420)
    assert process.returncode == 1, output  # exit 1: random weights fail every clip, as locally
    assert qa_files(out) == local_qa, "nothing twice, nothing lost, no batch recorded as lost on Ray"
    assert_redone_elsewhere_and_joined_worked(output, faults, QA_CLIPS // 2)


@pytest.mark.cluster
@only_when_selected
def test_qa_generation_driver_killed_and_run_again_continues(cluster, s3, qa_source, tiny_llama, local_qa, tmp_path):
    """Whole batches are committed as they come, so the rerun's batches line up with the local run's."""
    out = s3_out(tmp_path, "qa")
    command = qa_command(QA_SOURCE, tiny_llama, out, cluster.address)
    process = start_driver(command, s3)
    wait_for(lambda: qa_lines(out) > 0, process, "QA batch")
    kill_driver(process, f"mullama-qa-{process.pid}-")
    kept = qa_lines(out)
    _, output = run_driver(command, s3, exit_code=1)  # random weights fail every clip, as locally
    assert f"0 from an earlier run, {QA_CLIPS - kept} failed" in output, (kept, output)
    assert qa_files(out) == local_qa
