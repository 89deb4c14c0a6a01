"""Similar-track indexes on stores the tests create: exactness, update, refusals, corruption, evaluation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np
import pytest

from mullama.config import build_config
from mullama.errors import MullamaError
from mullama.knn import ClipIndex
from mullama.knn.build import build_index
from mullama.knn.choice import choose_index
from mullama.knn.config import IndexBuildConfig
from mullama.knn.evaluate import label_metrics
from mullama.knn.families import FAMILIES
from mullama.knn.families.flat import FlatFamily
from mullama.knn.index_family import IndexLayout
from mullama.knn.tuning import TuningQueries, tune
from mullama.store import FeatureStore
from tests.helpers import synthetic_store


def build(store: Path, **options) -> object:
    return build_index(build_config(IndexBuildConfig, {"store": str(store), "progress": False, **options}))


def reference_vectors(store: FeatureStore, ids: list[str]) -> np.ndarray:
    """The `all` recipe written out independently: mean of the L2-normalised layers, L2-normalised."""
    stacks = store.get(ids).astype(np.float64)
    layers = stacks / np.linalg.norm(stacks, axis=2, keepdims=True)
    mean = layers.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def reference_neighbours(vectors: np.ndarray, ids: list[str], query: int, k: int) -> list[str]:
    scores = vectors @ vectors[query]
    scores[query] = -np.inf
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("knn") / "store"
    synthetic_store(str(path), clips=600, per_partition=150)
    return path


def test_exact_index_finds_what_brute_force_finds(store_path):
    report = build(store_path)
    assert report.factory == "Flat" and report.rows == 600
    store = FeatureStore.open(str(store_path))
    ids = store.clip_ids()
    vectors = reference_vectors(store, ids)
    index = ClipIndex.open(str(store_path))
    for query in (0, 17, 599):
        found = index.search(clip_ids=[ids[query]], k=10)[0]
        assert [n.clip_id for n in found] == reference_neighbours(vectors, ids, query, 10)
        assert ids[query] not in [n.clip_id for n in found]
        expected = np.sort(vectors @ vectors[query])[-2]  # the best score after the query itself
        assert found[0].score == pytest.approx(expected, abs=2e-3)  # float16 vectors
        assert found[0].source.startswith("src/") and found[0].duration == 3.0
    metadata = json.loads((store_path / "indexes" / "default" / "index.json").read_text())
    assert metadata["recipe"]["name"] == "all" and len(metadata["partitions"]) == 4
    assert metadata["store"]["encoder"]["name"] == "synthetic" and metadata["rows"] == 600


@pytest.mark.parametrize("kind", ["IVF8,SQ8", "HNSW16,SQ8", "IVF8,PQ8"])
def test_approximate_indexes_reach_their_tuned_recall(store_path, kind):
    name = kind.replace(",", "-")
    report = build(store_path, name=name, type=kind, target_recall=0.95)
    assert report.search["recall_at_10"] >= 0.95
    result = run_cli("index", "eval", str(store_path), "--name", name, "--json", "--recall-queries", "100")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"][0]["recall"] >= 0.95


def test_update_equals_rebuild_and_masks_reextracted_clips(tmp_path):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=300, per_partition=100)
    build(path, name="grown")
    synthetic_store(str(path), clips=200, per_partition=100, seed=1, start=300)
    report = build(path, name="grown", update=True)
    assert report.added == 200 and report.partitions == 2
    assert "up to date" in build(path, name="grown", update=True).lines()[0]
    build(path, name="fresh")
    grown, fresh = ClipIndex.open(str(path), "grown"), ClipIndex.open(str(path), "fresh")
    ids = FeatureStore.open(str(path)).clip_ids()
    assert sorted(grown.rows_by_clip) == sorted(fresh.rows_by_clip) == sorted(ids)
    for clip in ids[::25]:
        assert [n.clip_id for n in grown.search(clip_ids=[clip])[0]] == \
               [n.clip_id for n in fresh.search(clip_ids=[clip])[0]]
    # clip00007 extracted again into a new partition (e.g. its source changed): its old row must never be found
    synthetic_store(str(path), clips=1, seed=9, start=7)
    report = build(path, name="grown", update=True)
    assert report.rows == 500 and any("masked" in note for note in report.notes)
    grown = ClipIndex.open(str(path), "grown")
    old_row = 7
    assert grown.rows_by_clip["clip00007"] == 500 and old_row in grown.metadata.masked_rows
    for clip in ids[::10]:
        assert old_row not in [n.row for n in grown.search(clip_ids=[clip], k=50)[0]]


def test_mismatched_encoders_and_stale_indexes_are_refused(tmp_path):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=50)
    build(path)
    index = ClipIndex.open(str(path))
    other = synthetic_store(str(tmp_path / "other"), clips=5, weights_hash="x" * 64)
    with pytest.raises(MullamaError, match="query comes from encoder"):
        index.search(stacks=other.get(["clip00000"]), encoder=other.encoder)
    with pytest.raises(MullamaError, match="takes stacks of 5 hidden states"):
        index.search(stacks=np.zeros((1, 3, 32)))
    for folder in ("partitions", "commits"):
        shutil.rmtree(path / folder)
    (path / "zarr.json").unlink()
    synthetic_store(str(path), clips=50, weights_hash="y" * 64)  # same path, another encoder
    result = run_cli("index", "query", str(path), "--clip", "clip00001")
    assert result.returncode == 2 and "older than the store's encoder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("index", "build", str(path), "--update")
    assert result.returncode == 2 and "--overwrite" in result.stderr


def test_errors_are_one_line(tmp_path, store_path):
    if not (store_path / "indexes" / "default").exists():
        build(store_path)
    empty = tmp_path / "empty"
    synthetic_store(str(empty), clips=0)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["index", "build", str(store_path), "--out", str(a_file)], "is a file, not a folder"),
        (["index", "build", str(store_path), "--update", "--overwrite"], "contradict"),
        (["index", "build", str(empty)], "no committed clips"),
        (["index", "query", str(store_path), "--clip", "nope"], "not in index"),
        (["index", "query", str(store_path), "--clip", "clip00001", "--audio", "x.wav"], "exactly one of"),
        (["index", "query", str(store_path), "--audio", "x.wav"], "--audio needs --mert"),
        (["index", "query", str(store_path), "--name", "missing", "--clip", "clip00001"], "no index named"),
        (["index", "query", str(tmp_path), "--clip", "a"], "neither an index folder"),
        (["index", "build", str(store_path), "--type", "IVF9,Nonsense"], "not a FAISS index description"),
        (["index", "build", str(store_path), "--name", "../up"], "--name"),
        (["index", "build", str(store_path), "--memory-gb", "nan"], "--memory-gb"),
        (["index", "build", str(store_path), "--type", "IVF65536,SQ8", "--name", "toobig"], "lists for 600 vectors"),
        (["index", "build", str(store_path), "--memory-gb", "0.000001", "--name", "tiny"], "raise --memory-gb"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert not (store_path / "indexes" / "toobig").exists()
    assert "already holds an index" in run_cli("index", "build", str(store_path)).stderr


def test_batch_queries_report_unknown_ids_and_exit_1(store_path, tmp_path):
    if not (store_path / "indexes" / "default").exists():
        build(store_path)
    batch = tmp_path / "ids.txt"
    batch.write_text("clip00001\nnot-a-clip\nclip00002\n")
    result = run_cli("index", "query", str(store_path), "--batch", str(batch), "-k", "3", "--json")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["clip00001", "clip00002", "not-a-clip"]
    assert len(lines[0]["neighbours"]) == 3 and lines[2]["error"] == "not in the index"


@pytest.mark.parametrize("damage", ["faiss-bytes", "vectors-truncated", "metadata", "segment-missing"])
def test_corrupted_files_are_one_clear_error(tmp_path, damage):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=40)
    build(path)
    folder = path / "indexes" / "default"
    metadata = json.loads((folder / "index.json").read_text())
    segment = folder / "segments" / metadata["segments"][0]["name"]
    if damage == "faiss-bytes":
        target = folder / metadata["index_file"]["key"]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "vectors-truncated":
        target = segment / "vectors.npy"
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "metadata":
        (folder / "index.json").write_text("{not json")
    else:
        shutil.rmtree(segment)
    result = run_cli("index", "query", str(path), "--clip", "clip00001")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert ("corrupted" in result.stderr or "missing" in result.stderr) and "rebuild" in result.stderr


def test_killed_build_leaves_the_previous_index_whole(tmp_path, monkeypatch):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=60)
    build(path)
    before = (path / "indexes" / "default" / "index.json").read_bytes()
    synthetic_store(str(path), clips=30, seed=2, start=60)
    from mullama.knn import files

    def killed(self, metadata, previous):
        raise KeyboardInterrupt  # dies after writing the new segment and FAISS file, before index.json

    monkeypatch.setattr(files.IndexFolder, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        build(path, update=True)
    monkeypatch.undo()
    assert (path / "indexes" / "default" / "index.json").read_bytes() == before
    assert len(ClipIndex.open(str(path))) == 60
    build(path, update=True)  # the next build finishes the job and removes the debris
    folder = path / "indexes" / "default"
    assert len(ClipIndex.open(str(path))) == 90
    assert len(list(folder.glob("index-*.faiss"))) == 1 and len(list((folder / "segments").iterdir())) == 2


def test_label_metrics_against_hand_counts():
    values = {"q": "a", "n1": "a", "n2": "b", "n3": "a", "s1": "a"}
    groups = {"q": "x", "s1": "x", "n1": "y", "n2": "y", "n3": "z"}
    # s1 shares the query's source and is skipped; kept neighbours n1 (hit), n2 (miss), n3 (hit)
    metrics = label_metrics(["q"], [["s1", "n1", "n2", "n3"]], values, groups, k=3)
    assert metrics["precision"] == pytest.approx(2 / 3)
    ideal = 1 + 1 / np.log2(3)  # two other-source clips could agree
    assert metrics["ndcg"] == pytest.approx((1 + 1 / np.log2(4)) / ideal)


def test_eval_compares_recipes_on_labels(store_path, tmp_path):
    store = FeatureStore.open(str(store_path))
    labels = tmp_path / "labels.csv"
    rows = ["clip_id,label_name,value"]
    for clip in store.clip_ids():
        cluster = int(store.record(clip).source.split("/")[1].split(".")[0])
        rows += [f"{clip},cluster,{cluster}", f"{clip},parity,{cluster % 2}"]
    labels.write_text("\n".join(rows) + "\n")
    result = run_cli("index", "eval", str(store_path), "--name", "none", "--labels", str(labels), "--recipe", "all",
                     "--recipe", "last", "--recipe", "layers:1-2", "--json", "--same-source", "nothing")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["recipe"] for row in report["rows"]] == ["all", "last", "layers:1-2"]
    assert report["rows"][0]["labels"]["cluster"]["precision"] > 0.9  # clusters are well separated
    assert "same-source neighbours are counted" in report["notes"][0]


def test_a_second_build_of_the_same_index_waits_its_turn(tmp_path):
    from mullama.durable import owned_folder

    path = tmp_path / "store"
    synthetic_store(str(path), clips=30)
    with owned_folder(path / "indexes" / "default", ".lock", "index folder", "busy"):
        with pytest.raises(MullamaError, match="another build is writing"):
            build(path)
    build(path)
    assert len(ClipIndex.open(str(path))) == 30


@pytest.mark.parametrize("factory, family, params, code_bytes", [
    ("Flat", "Flat", None, 128), ("SQ8", "Flat", None, 32), ("IVF512,PQ16x4fs", "IVF", 512, 8),
    ("IVF64,SQfp16", "IVF", 64, 64), ("HNSW32", "HNSW", 32, 128), ("HNSW16,SQ8", "HNSW", 16, 32),
    ("OPQ8_16,IVF8,PQ8", "IVF", 8, 8), ("IVF8,PQ8,RFlat", "IVF", 8, 8 + 128)])
def test_factory_strings_parse_into_layouts_faiss_agrees_with(factory, family, params, code_bytes):
    layout = FAMILIES.parse(factory)
    assert layout.family.name == family and layout.code_bytes(1, 32) == code_bytes
    assert params == (getattr(layout.params, "lists", None) or getattr(layout.params, "links", None))
    assert layout.trains == (not faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT).is_trained)
    assert layout.exact == (factory == "Flat") and (layout.knob is None) == (family == "Flat")


@dataclass(frozen=True)
class NsgFamily(FlatFamily):
    """faiss's NSG graph, registered by the test alone: a family is one class plus one registration."""

    name: str = "NSG"

    def read(self, parts: Sequence[str]) -> tuple[Any, str] | None:
        match = re.fullmatch(r"NSG(\d+)", parts[0])
        return (int(match.group(1)), parts[1]) if match and len(parts) == 2 else None

    def resident_bytes(self, layout: IndexLayout, n: int, dim: int) -> int:
        return int(layout.code_bytes(n, dim) + 4 * layout.params * n)

    def exact(self, layout: IndexLayout) -> bool:
        return False

    def incremental(self, layout: IndexLayout) -> bool:
        return False  # NSG builds its graph once, from every vector


def test_a_registered_family_is_built_and_an_unknown_one_refused(store_path, monkeypatch):
    with pytest.raises(MullamaError, match="not a FAISS index description") as refused:
        choose_index(600, 32, 1e9, "NSG16,Flat")
    assert "no index family reads 'NSG16,Flat'" in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setitem(FAMILIES.families, "NSG", NsgFamily())
    choice = choose_index(600, 32, 1e9, "NSG16,Flat")
    assert choice.layout.family.name == "NSG" and choice.layout.resident_bytes(600, 32) == 600 * (128 + 64)
    report = build(store_path, name="nsg", type="NSG16,Flat")
    assert report.factory == "NSG16,Flat" and report.rows == 600
    found = ClipIndex.open(str(store_path), "nsg").search(clip_ids=["clip00017"], k=10)[0]
    assert len(found) == 10 and "clip00017" not in [n.clip_id for n in found]


def test_exact_search_is_chosen_by_its_cost_per_query_not_the_clip_count():
    assert choose_index(100_000, 64, 1.5e9).exact  # issue 28's dense collection: 26 MB, a tenth of the bound
    assert not choose_index(60_000, 2048, 1.5e9).exact
    assert choose_index(1_000_000, 1024, 1.5e9).factory == "IVF2048,PQ32x4fs,Refine(SQ8)"


# bytes: Flat needs 128 at 32 dimensions, fast-scan codes 15 and the mapped float16 vectors 64 more, SQ8 codes 32
BUDGET_PER_CLIP = {"finer codes fit": 100, "refine codes fit": 50, "fast-scan codes only": 20}


@pytest.fixture(scope="module")
def dense_and_spread(tmp_path_factory) -> dict[str, Path]:
    """3,000 clips in 4 tight groups (many near-alike clips) and in 200 spread ones."""
    root = tmp_path_factory.mktemp("density")
    for name, clusters in (("dense", 4), ("spread", 200)):
        synthetic_store(str(root / name), clips=3000, per_partition=1000, clusters=clusters)
    return {"dense": root / "dense", "spread": root / "spread"}


def test_dense_data_gets_finer_codes_and_spread_data_keeps_fast_scan(dense_and_spread):
    memory_gb = 3000 * BUDGET_PER_CLIP["finer codes fit"] / 1e9
    dense = build(dense_and_spread["dense"], name="fit", memory_gb=memory_gb)
    assert dense.exit_code == 0 and dense.search["recall_at_10"] >= 0.99
    tried = dense.search["tried"]
    assert tried[0]["factory"] == "IVF64,PQ8x4fs" and tried[0]["recall_at_10"] < 0.99 and tried[0]["shortlist"] == 32
    assert dense.factory == tried[-1]["factory"] != tried[0]["factory"]
    spread = build(dense_and_spread["spread"], name="fit", memory_gb=memory_gb)
    assert spread.factory == "IVF64,PQ8x4fs" and spread.search["recall_at_10"] >= 0.99 and "tried" not in spread.search
    metadata = json.loads((dense_and_spread["dense"] / "indexes" / "fit" / "index.json").read_text())
    assert metadata["factory"] == dense.factory and metadata["search"]["recall_at_10"] >= 0.99


def test_a_target_out_of_reach_exits_1_and_says_what_reaches_it(dense_and_spread):
    store = str(dense_and_spread["dense"])
    memory = str(3000 * BUDGET_PER_CLIP["fast-scan codes only"] / 1e9)
    result = run_cli("index", "build", store, "--name", "tight", "--memory-gb", memory, "--no-progress")
    assert result.returncode == 1, result.stderr
    assert "stays below --target-recall 0.99" in result.stdout and "--type Flat" in result.stdout
    assert "--memory-gb" in result.stdout and "--allow-below-target" in result.stdout
    assert not (dense_and_spread["dense"] / "indexes" / "tight" / "index.json").exists()
    result = run_cli("index", "build", store, "--name", "tight", "--memory-gb", memory, "--no-progress",
                     "--allow-below-target")
    assert result.returncode == 0 and "note: recall@10" in result.stdout
    assert ClipIndex.open(store, "tight").metadata.search["recall_at_10"] < 0.99


def test_the_re_ranking_store_counts_against_the_budget():
    """The float16 vectors a re-ranking reads count like RAM; where they do not fit, refine codes kept in RAM
    re-rank instead, the finest that fit (issue 28: 400 MB in all at 1M x 1024, not 2 GB of mapped pages)."""
    mapped = choose_index(1_000_000, 1024, 3e9)
    assert mapped.layout.refine is None and "memory-mapped" in mapped.reason
    assert choose_index(1_000_000, 1024, 1.5e9).layout.refine.text == "SQ8"
    compact = choose_index(1_000_000, 1024, 0.4e9)
    assert compact.layout.refine.text == "PQ256" and compact.layout.resident_bytes(1_000_000, 1024) <= 0.4e9
    assert choose_index(1_000_000, 1024, 0.1e9).layout.refine is None  # nothing fits: mapped, said so
    assert "outside the budget" in choose_index(1_000_000, 1024, 0.1e9).reason
    assert choose_index(5_000, 16_384, 0.05e9).layout.refine.text == "SQ4"
    assert choose_index(5_000, 16_384, 0.03e9).layout.refine is None  # 256-codeword PQ needs 9,984 vectors


def test_refine_codes_in_ram_re_rank_without_reading_the_vectors(dense_and_spread, monkeypatch):
    memory_gb = 3000 * BUDGET_PER_CLIP["refine codes fit"] / 1e9
    report = build(dense_and_spread["spread"], name="refined", memory_gb=memory_gb)
    assert report.exit_code == 0 and report.factory.endswith(",Refine(SQ8)")
    assert report.search["recall_at_10"] >= 0.99 and report.resident_mb * 1e6 <= memory_gb * 1e9
    index = ClipIndex.open(str(dense_and_spread["spread"]), "refined")
    queries = index.vectors(np.arange(20))
    exact = np.argsort(-(queries @ index.vectors(np.arange(3000)).T), axis=1)[:, :10]

    def unread(self, rows):
        raise AssertionError("a refine index re-ranks from its own codes")

    monkeypatch.setattr(type(index.searcher.vectors), "gather", unread)
    _, rows = index.search_vectors(queries, 10)
    assert np.mean([len(set(found) & set(truth)) / 10 for found, truth in zip(rows, exact)]) >= 0.95


@dataclass
class ListsNeeded:
    """A searcher that finds the true neighbours once it probes enough lists for its shortlist."""

    needed: dict[int, int]  # shortlist -> nprobe that reaches every neighbour
    layout: IndexLayout = FAMILIES.parse("IVF64,PQ8x4fs")

    def search(self, queries, k, exclude_rows=None, shortlist=0, nprobe=0):
        rows = np.tile(np.arange(k), (len(queries), 1))
        return np.zeros(rows.shape, np.float32), rows if nprobe >= self.needed[shortlist] else rows + k


def test_tuning_takes_a_longer_shortlist_while_it_saves_a_quarter_of_the_lists():
    queries = TuningQueries(np.arange(4), np.zeros((4, 8), np.float32), np.tile(np.arange(10), (4, 1)), 10)
    search = tune(ListsNeeded({4: 64, 8: 16, 16: 12, 32: 12}), queries, 4, 0.99)
    assert (search["shortlist"], search["nprobe"]) == (16, 12)  # 32k would probe as many lists as 16k
    search = tune(ListsNeeded({4: 8, 8: 7, 16: 1, 32: 1}), queries, 4, 0.99)
    assert (search["shortlist"], search["nprobe"]) == (4, 8)  # 8k saves an eighth: not worth re-ranking twice


def test_an_update_tunes_again_when_new_clips_miss_the_target(tmp_path):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=1000, per_partition=500, clusters=50)
    first = build(path, type="IVF16,PQ8x4fs", target_recall=0.95)
    assert first.search["recall_at_10"] >= 0.95
    synthetic_store(str(path), clips=2000, per_partition=1000, clusters=2, seed=3, start=1000)  # a shift
    refused = build(path, update=True)
    assert refused.exit_code == 1 and "rebuild with --overwrite" in refused.lines()[0]
    assert ClipIndex.open(str(path)).metadata.rows == 1000  # nothing committed
    kept = build(path, update=True, allow_below_target=True)
    assert any("tuned again" in note for note in kept.notes) and kept.search["shortlist"] > first.search["shortlist"]
    assert ClipIndex.open(str(path)).metadata.rows == 3000


def test_a_reader_during_a_rebuild_sees_the_old_or_the_new_index_whole(tmp_path, monkeypatch):
    path = tmp_path / "store"
    synthetic_store(str(path), clips=40)
    build(path)
    from mullama.knn import files

    read_metadata = files.IndexFolder.read_metadata
    rebuilds = []

    def rebuilt_after_reading(self):  # the reader read index.json, then a rebuild replaced the index
        metadata = read_metadata(self)
        if not rebuilds:
            rebuilds.append("started")  # the build reads index.json too
            build(path, overwrite=True)
        return metadata

    monkeypatch.setattr(files.IndexFolder, "read_metadata", rebuilt_after_reading)
    index = ClipIndex.open(str(path))
    monkeypatch.undo()
    assert rebuilds and len(index) == 40
    assert index.metadata.index_file == ClipIndex.open(str(path)).metadata.index_file  # the new generation


def test_an_index_copied_from_another_store_is_queried_with_a_warning(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    synthetic_store(str(first), clips=30)
    synthetic_store(str(second), clips=30)  # same clips and encoder, another store
    build(first)
    shutil.copytree(first / "indexes", second / "indexes")
    result = run_cli("index", "query", str(second), "--clip", "clip00001", "--k", "2")
    assert result.returncode == 0
    [warning] = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert f"was built from another store at {first}" in warning and f"not {second}:" in warning
    own = run_cli("index", "query", str(first), "--clip", "clip00001", "--k", "2")
    assert own.returncode == 0 and "warning" not in own.stdout + own.stderr
    index = ClipIndex.open(str(second))
    assert any("another store" in w for w in index.home_store_warnings())



def test_a_forced_type_that_cannot_train_on_the_store_is_one_line(tmp_path):
    """Issue 27: 8-bit product codes train 256 centroids each, which 64 clips cannot; faiss's C++ error becomes
    one line."""
    synthetic_store(str(tmp_path / "small"), clips=64, per_partition=32)
    with pytest.raises(MullamaError, match="cannot be trained on these 64 vectors") as refused:
        build(tmp_path / "small", type="IVF4,PQ16")
    assert "\n" not in str(refused.value)
