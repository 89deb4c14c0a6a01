"""Similar-track search at a million clips: mullama's index choices side by side with autofaiss's pick.

Data: N x 1024 unit vectors from a mixture of anisotropic clusters (many more clusters than IVF lists,
broad noise, so that probing matters as it does on real tracks), and held-out queries from the same
mixture. Ground truth: exact inner-product top-10 over the float32 vectors.

For each setting: build time (training, encoding, tuning); memory: the anonymous memory of a fresh process
that loads the index (RssAnon) plus the pages of the memory-mapped float16 vectors its queries touch
(RssFile), which a design re-ranking from those vectors needs as much as its own RAM; recall@10 against
exact; p50/p99 single-query latency on one thread; batched QPS on all threads; a cold-cache row (the vectors
and index files evicted from the page cache with posix_fadvise, no warm-up); and the recall-against-latency
curve over nprobe and the shortlist. autofaiss runs in its own virtual environment (it needs
faiss-cpu <= 1.13.2 and numpy < 2) and builds its index once, in the background (it trains on most of the
vectors: hours on 2 cores); this script only measures it, in a fresh process:

    python -m venv /work/autofaiss-venv
    /work/autofaiss-venv/bin/pip install "autofaiss==2.18.*" "faiss-cpu<=1.13.2" "numpy<2" "pyarrow==22.0.0"
    python benchmarks/knn_index.py --work /work/knn-bench --only none          # the data
    nice -n 19 /work/autofaiss-venv/bin/python benchmarks/knn_autofaiss.py build /work/knn-bench &
    python benchmarks/knn_index.py --work /work/knn-bench --autofaiss-python /work/autofaiss-venv/bin/python
    python benchmarks/knn_index.py --work /work/knn-bench --remeasure --autofaiss-python ...   # no rebuilds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from mullama.knn.choice import choose_index, make_index
from mullama.knn.clip_index import RowVectors, Searcher
from mullama.knn.families import describe
from mullama.knn.files import IndexFolder
from mullama.knn.tuning import tune, tuning_queries

K = 10
SPREAD = (float(os.environ.get('KNN_SPREAD_LOW', 0.05)), float(os.environ.get('KNN_SPREAD_HIGH', 0.3)))
NOISE = float(os.environ.get('KNN_NOISE', 0.25))
SKEW = float(os.environ.get('KNN_SKEW', 0.2))


# ------------------------------------------------------------------------------------------------ data
def mixture(n: int, dim: int, clusters: int, seed: int, rng_offset: int = 0) -> np.ndarray:
    """Unit vectors: a cluster centre, plus spread along 16 directions of the cluster's own with per-cluster
    scales (anisotropic, and differently so in every cluster), plus isotropic noise; uneven cluster sizes.
    `rng_offset` draws other members of the same clusters (held-out queries)."""
    base = np.random.default_rng(seed)
    centres = base.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = base.uniform(SPREAD[0], SPREAD[1], size=(clusters, 16)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** SKEW
    rng = np.random.default_rng(seed + 1 + rng_offset)
    sizes = rng.multinomial(n, weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for cluster in np.nonzero(sizes)[0]:
        size = int(sizes[cluster])
        directions = np.random.default_rng([seed, int(cluster)]).normal(size=(16, dim)).astype(np.float32)
        directions /= np.sqrt(dim)
        coefficients = rng.normal(size=(size, 16)).astype(np.float32) * scales[cluster]
        noise = rng.normal(scale=NOISE / np.sqrt(dim), size=(size, dim)).astype(np.float32)
        block = centres[cluster] + coefficients @ directions + noise
        out[start:start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
        start += size
    return out[rng.permutation(n)]


def prepare(work: Path, n: int, dim: int, clusters: int, queries: int) -> None:
    if (work / "truth.npy").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = mixture(n, dim, clusters, seed=0)
    (work / "emb").mkdir(exist_ok=True)
    np.save(work / "emb" / "base.npy", data)  # float32, for exact truth and autofaiss
    np.save(work / "queries.npy", mixture(queries, dim, clusters, seed=0, rng_offset=1))
    folder = IndexFolder(str(work / "mullama"))
    folder.write_segment("base", data.astype(np.float16), [{"clip_id": str(i)} for i in range(n)])
    truth_scores, truth = faiss.knn(np.load(work / "queries.npy"), data, K, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(work / "truth.npy", truth)
    gaps = truth_scores[:, K - 1] - faiss.knn(np.load(work / "queries.npy"), data, K + 1,
                                              metric=faiss.METRIC_INNER_PRODUCT)[0][:, K]
    print(f"data: {n} x {dim}, {clusters} clusters, {queries} queries in {time.monotonic() - started:.0f} s; "
          f"median gap between 10th and 11th neighbour {np.median(gaps):.4f}", flush=True)


# ------------------------------------------------------------------------------------------------ mullama
def build(work: Path, label: str, factory: str, memory_gb: float, target: float) -> dict:
    n, dim = np.load(work / "emb" / "base.npy", mmap_mode="r").shape
    choice = choose_index(n, dim, memory_gb * 1e9, factory)
    vectors = np.load(work / "mullama" / "segments" / "base" / "vectors.npy", mmap_mode="r")
    started, cpu_started = time.monotonic(), cpu_seconds()
    index = make_index(choice, dim)
    sample = np.random.default_rng(0).choice(n, size=choice.train_size, replace=False) if choice.train_size else []
    if choice.layout.trains:
        index.train(np.asarray(vectors[np.sort(sample)], dtype=np.float32))
    trained = time.monotonic()
    for start in range(0, n, 100_000):
        index.add(np.asarray(vectors[start:start + 100_000], dtype=np.float32))
    encoded = time.monotonic()
    searcher = Searcher(index, choice.layout, RowVectors([vectors]), {"shortlist": choice.shortlist}, [])
    search = tune(searcher, tuning_queries(searcher.vectors, 0, set()), choice.shortlist, target)
    finished, cpu = time.monotonic(), cpu_seconds() - cpu_started
    path = work / f"{label}.faiss"
    faiss.write_index(index, str(path))
    print(f"{label}: {choice.factory} trained in {trained - started:.0f} s on {len(sample)}, encoded in "
          f"{encoded - trained:.0f} s, tuned in {finished - encoded:.0f} s ({cpu:.0f} s of CPU): {search}", flush=True)
    return {"label": label, "factory": choice.factory, "build_s": round(finished - started, 1), "build_cpu_s": round(cpu),
            "train_s": round(trained - started, 1), "encode_s": round(encoded - trained, 1),
            "tune_s": round(finished - encoded, 1), "search": search, "index_file": str(path),
            "estimated_mb": round(choice.layout.resident_bytes(n, dim) / 1e6)}


def cpu_seconds() -> float:
    """User and system CPU time of this process: a build's cost apart from what other processes took."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (a cold start: a server after a reboot, or under memory pressure)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def timed(searcher: Searcher, queries: np.ndarray, truth: np.ndarray, **settings: int) -> dict:
    """Single queries on one thread: recall@10 and latency percentiles."""
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        _, rows = searcher.search(query[None], K, **settings)
        latencies.append(time.perf_counter() - started)
        found.append(rows[0])
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    return {"recall_at_10": round(recall, 4), "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 3)}


def measure(work: Path, index_file: str, factory: str, search: dict, rerank: bool, cold: bool,
            mapped: bool = False) -> dict:
    """In a fresh process: load the index (and map the vectors), then time queries. Memory: the anonymous
    memory the index takes plus the pages of the mapped vectors the queries touch (cold: evicted first, and no
    warm-up queries). `mapped`: a refine index's fast-scan codes alone, re-ranked from the mapped float16
    vectors instead of its refine codes (the two re-ranking stores compared on the same codes)."""
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    vectors_file = work / "mullama" / "segments" / "base" / "vectors.npy"
    if cold:
        evict(vectors_file)
        evict(Path(index_file))
    before = rss()
    started = time.perf_counter()
    index = faiss.read_index(index_file)
    if mapped:
        index = faiss.clone_index(faiss.downcast_index(index).base_index)  # the refine codes are freed
        factory = factory.rsplit(",Refine(", 1)[0]
    vectors = np.load(vectors_file, mmap_mode="r")
    layout = describe(factory)
    settings = dict(search) if rerank else {**search, "shortlist": 1}
    searcher = Searcher(index, layout, RowVectors([vectors]), settings, [])
    loaded = rss()
    load_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    if not cold:
        for query in queries[:20]:  # warm caches the way a serving process is warm
            searcher.search(query[None], K)
    tuned = timed(searcher, queries, truth)
    after = rss()
    curve = [] if cold or layout.knob is None else [
        {layout.knob.label: value, "shortlist": shortlist, **timed(searcher, queries, truth, shortlist=shortlist,
                                                                   **{layout.knob.key: value})}
        for value in CURVE_KNOB for shortlist in CURVE_SHORTLISTS]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    searcher.search(queries, K)
    batched = time.perf_counter() - started
    anonymous = (loaded["RssAnon"] - before["RssAnon"]) / 1e6
    touched = (after["RssFile"] - loaded["RssFile"]) / 1e6
    return {**tuned, "batched_qps": round(len(queries) / batched), "load_s": round(load_s, 2),
            "index_rss_mb": round(anonymous), "mapped_mb_touched": round(touched),
            "total_mb": round(anonymous + touched), "curve": curve}


CURVE_KNOB = (128, 256, 512)  # nprobe of 2,048 lists
CURVE_SHORTLISTS = (4, 8, 16)


def measure_in_child(work: Path, result: dict, rerank: bool, cold: bool = False, mapped: bool = False) -> dict:
    output = subprocess.run([sys.executable, __file__, "--work", str(work), "--measure", json.dumps(
        {"index_file": result["index_file"], "factory": result["factory"], "search": result["search"],
         "rerank": rerank, "cold": cold, "mapped": mapped})],
        check=True, capture_output=True, text=True).stdout
    measured = json.loads(output.strip().splitlines()[-1])
    print(json.dumps({"label": result["label"], "cold": cold, "mapped": mapped, "rerank": rerank, **measured}),
          flush=True)
    return measured


def autofaiss_row(work: Path, python: str) -> dict:
    """autofaiss's index measured in a fresh process (never built here: knn_autofaiss.py build does that once);
    while it is still building, a row that says so."""
    if not (work / "autofaiss_build.json").is_file():
        log = work / "autofaiss_build.log"
        running = time.time() - log.stat().st_ctime if log.is_file() else 0
        return {"label": "autofaiss", "factory": "(still building)", "search": "", "build_s": f"> {running:.0f}",
                "index_rss_mb": "", "mapped_mb_touched": "", "total_mb": "", "recall_at_10": "", "p50_ms": "",
                "p99_ms": "", "batched_qps": ""}
    script = Path(__file__).with_name("knn_autofaiss.py")
    output = subprocess.run([python, str(script), "measure", str(work)], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--target", type=float, default=0.995)
    parser.add_argument("--autofaiss-python", default="")
    parser.add_argument("--only", default="", help="comma-separated labels to run")
    parser.add_argument("--remeasure", action="store_true", help="reuse the indexes built by an earlier run "
                        "(builds.json) and measure them again, on a quiet machine")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(measure(args.work, spec["index_file"], spec["factory"], spec["search"], spec["rerank"],
                                 spec["cold"], spec["mapped"])))
        return
    prepare(args.work, args.n, args.dim, args.clusters, args.queries)
    saved = args.work / "builds.json"
    builds = json.loads(saved.read_text()) if args.remeasure and saved.is_file() else {}
    rows = []
    for label, factory, memory in SETTINGS:
        if args.only and label not in args.only.split(","):
            continue
        if label not in builds:
            builds[label] = build(args.work, label.split()[0].replace(",", "-") + f"-{memory}", factory, memory,
                                  args.target)
            builds[label]["label"] = label
            saved.write_text(json.dumps(builds, indent=1))
        result = builds[label]
        rows.append({**result, **measure_in_child(args.work, result, rerank=True)})
        rows.append({**result, "label": f"{label}, cold page cache",
                     **measure_in_child(args.work, result, rerank=True, cold=True)})
        if label == "auto 1.5 GB":
            rows.append({**result, "label": "auto 1.5 GB without re-ranking",
                         **measure_in_child(args.work, result, rerank=False)})
            for cold in (False, True):
                rows.append({**result, "label": "auto 1.5 GB's fast-scan codes re-ranked from the mapped float16 "
                             "vectors" + (", cold page cache" if cold else ""), "factory": result["factory"].rsplit(
                                 ",Refine(", 1)[0], **measure_in_child(args.work, result, True, cold, mapped=True)})
    if args.autofaiss_python and (not args.only or "autofaiss" in args.only):
        rows.append(autofaiss_row(args.work, args.autofaiss_python))
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows)


SETTINGS = [("auto 1.5 GB", "auto", 1.5), ("auto 0.4 GB (compact)", "auto", 0.4),
            ("auto 2.5 GB (mapped float16 re-rank)", "auto", 2.5),
            ("IVF2048,SQ8 + re-rank", "IVF2048,SQ8", 1.5), ("HNSW32,SQ8 + re-rank", "HNSW32,SQ8", 1.5)]


def print_tables(rows: list[dict]) -> None:
    print("\n| setting | index, search | build s | anon MB | mapped MB touched | total MB | recall@10 | p50 ms | "
          "p99 ms | batched QPS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        search = row.get("search", "")
        if isinstance(search, dict) and (knob := describe(row["factory"]).knob) is not None:
            search = f"{knob.label} {search.get(knob.key)}, shortlist {search['shortlist']}k"
        print(f"| {row['label']} | {row['factory']}, {search} | {row['build_s']} | {row['index_rss_mb']} | "
              f"{row.get('mapped_mb_touched', '')} | {row.get('total_mb', '')} | {row['recall_at_10']} | "
              f"{row['p50_ms']} | {row['p99_ms']} | {row['batched_qps']} |")
    print("\ncurves (single queries, one thread): setting | recall@10 | p50 ms")
    for row in rows:
        for point in row.get("curve", []):
            setting = ", ".join(f"{key} {value}" for key, value in point.items()
                                if key not in ("recall_at_10", "p50_ms", "p99_ms"))
            print(f"| {row['label']} | {setting} | {point['recall_at_10']} | {point['p50_ms']} |")


if __name__ == "__main__":
    main()
