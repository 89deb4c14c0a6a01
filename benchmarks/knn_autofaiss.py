"""autofaiss's pick on the data of knn_index.py, run in autofaiss's own virtual environment (see there).

    /work/autofaiss-venv/bin/python benchmarks/knn_autofaiss.py build WORK [--memory 1.5G]   # once: hours
    /work/autofaiss-venv/bin/python benchmarks/knn_autofaiss.py measure WORK                 # fresh process

`build` runs autofaiss's `build_index` once and keeps its index, its infos and the build time in WORK
(autofaiss_build.json); `measure` never builds: it loads that index in a fresh process and prints one JSON
line in knn_index.py's row format, with the recall-against-latency curve of the index (nprobe, and the
HNSW quantiser's efSearch with it, set through faiss's ParameterSpace) as built and with its shortlist
re-ranked exactly from the same float16 vectors mullama re-ranks from, so both sides are swept alike.
Imports nothing from mullama (other faiss and numpy).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

import faiss
import numpy as np

K = 10
SHORTLISTS = (1, 4, 16)  # candidates per neighbour asked of the index; 1: its own ranking
NPROBES = (16, 32, 64, 128, 256, 512, 1024)


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def build(work: Path, memory: str, available: str) -> None:
    from autofaiss import build_index  # only the build needs autofaiss (and its pandas, pyarrow) loaded

    started = time.monotonic()
    _, infos = build_index(embeddings=str(work / "emb"), index_path=str(work / "autofaiss.index"),
                           index_infos_path=str(work / "autofaiss_infos.json"), max_index_memory_usage=memory,
                           current_memory_available=available, metric_type="ip", nb_cores=os.cpu_count(),
                           verbose=20)
    (work / "autofaiss_build.json").write_text(json.dumps({
        "build_s": round(time.monotonic() - started, 1), "max_index_memory_usage": memory,
        "current_memory_available": available, "index_key": (infos or {}).get("index_key", "?"),
        "index_param": (infos or {}).get("index_param", ""), "autofaiss_version": version("autofaiss"),
        "faiss_version": faiss.__version__}, indent=1))


def timed(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, vectors: np.ndarray, shortlist: int) -> dict:
    """Single queries on one thread: the index's top k x shortlist, re-ranked exactly when shortlist > 1."""
    latencies, found = [], []
    for query in queries:
        begun = time.perf_counter()
        _, rows = index.search(query[None], K * shortlist)
        rows = rows[0][rows[0] >= 0]
        if shortlist > 1:
            ordered = np.sort(rows)
            scores = np.asarray(vectors[ordered], dtype=np.float32) @ query
            rows = ordered[np.argsort(-scores, kind="stable")]
        latencies.append(time.perf_counter() - begun)
        found.append(rows[:K])
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    return {"recall_at_10": round(recall, 4), "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 3)}


def measure(work: Path) -> None:
    built = json.loads((work / "autofaiss_build.json").read_text())
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    vectors = np.load(work / "mullama" / "segments" / "base" / "vectors.npy", mmap_mode="r")
    before = rss_anon()
    index = faiss.read_index(str(work / "autofaiss.index"))
    loaded = rss_anon()
    space = faiss.ParameterSpace()
    hnsw_quantiser = "_HNSW" in built["index_key"]
    faiss.omp_set_num_threads(1)
    space.set_index_parameters(index, built["index_param"])
    index.search(queries[:20], K)  # warm, as a serving process is
    picked = timed(index, queries, truth, vectors, 1)
    curve = []
    for nprobe in NPROBES:
        setting = f"nprobe={nprobe}" + (f",quantizer_efSearch={max(2 * nprobe, 64)}" if hnsw_quantiser else "")
        space.set_index_parameters(index, setting)
        for shortlist in SHORTLISTS:
            curve.append({"setting": setting, "shortlist": shortlist, **timed(index, queries, truth, vectors, shortlist)})
            print(json.dumps(curve[-1]), flush=True)
    space.set_index_parameters(index, built["index_param"])
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    begun = time.perf_counter()
    index.search(queries, K)
    batched = time.perf_counter() - begun
    print(json.dumps({"label": f"autofaiss ({built['max_index_memory_usage']} budget)", "factory": built["index_key"],
                      "search": built["index_param"], "build_s": built["build_s"],
                      "index_rss_mb": round((loaded - before) / 1e6), "mapped_mb_touched": 0, **picked,
                      "batched_qps": round(len(queries) / batched), "curve": curve,
                      "faiss_version": faiss.__version__, "autofaiss_version": built["autofaiss_version"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("build", "measure"))
    parser.add_argument("work", type=Path)
    parser.add_argument("--memory", default="1.5G", help="autofaiss's max_index_memory_usage")
    parser.add_argument("--available", default="6G", help="autofaiss's current_memory_available (the machine is "
                                                          "shared: keep it small)")
    args = parser.parse_args()
    if args.step == "build":
        build(args.work, args.memory, args.available)
    else:
        measure(args.work)


if __name__ == "__main__":
    main()
