"""autofaiss's pick on the data of knn_index.py, run in autofaiss's own virtual environment (see there).

    /work/autofaiss-venv/bin/python benchmarks/knn_autofaiss.py WORK

Prints one JSON line in knn_index.py's row format. Imports nothing from mullama (other faiss and numpy).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from autofaiss import build_index

K = 10


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    work = Path(sys.argv[1])
    path = work / "autofaiss.index"
    started = time.monotonic()
    _, infos = build_index(embeddings=str(work / "emb"), index_path=str(path),
                           index_infos_path=str(work / "autofaiss_infos.json"), max_index_memory_usage="1.5G",
                           current_memory_available="12G", metric_type="ip", nb_cores=os.cpu_count(), verbose=30)
    build_s = time.monotonic() - started
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    before = rss_anon()
    index = faiss.read_index(str(path))
    loaded = rss_anon()
    faiss.omp_set_num_threads(1)
    index.search(queries[:20], K)
    latencies, found = [], []
    for query in queries:
        begun = time.perf_counter()
        _, rows = index.search(query[None], K)
        latencies.append(time.perf_counter() - begun)
        found.append(rows[0])
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    begun = time.perf_counter()
    index.search(queries, K)
    batched = time.perf_counter() - begun
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
    print(json.dumps({"label": "autofaiss (1.5G budget)", "factory": (infos or {}).get("index_key", "?"),
                      "search": (infos or {}).get("index_param", ""), "build_s": round(build_s, 1),
                      "index_rss_mb": round((loaded - before) / 1e6), "recall_at_10": round(recall, 4),
                      "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
                      "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 3),
                      "batched_qps": round(len(queries) / batched), "faiss_version": faiss.__version__}))


if __name__ == "__main__":
    main()
