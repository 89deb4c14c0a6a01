"""Tuning an approximate index to a target recall: the family's knob (nprobe, efSearch) and the shortlist.

Recall is measured on stored clips sampled as queries, each searched without itself, against exact search
over every row. The shortlist matters as much as the knob where clips are dense: when many near-alike
clips share a list, coarse codes cannot order them, so the true neighbours are found by the lists but
fall outside a 4k shortlist, and probing more lists only adds competitors (issue 28: recall@10 fell from
0.087 to 0.055 as nprobe grew on 64 tight groups). A longer shortlist re-ranks more of them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mullama.knn.clip_index import RowVectors, Searcher, exact_search
from mullama.knn.index_family import SearchKnob

TUNE_QUERIES = 256
TUNE_K = 10
TUNE_BISECTIONS = 3  # after doubling: the setting within an eighth of the gap above the cheapest that reaches
# Shortlists tried, as multiples of k, shortest first: on the spread benchmark data (BENCHMARKS.md, "kNN
# index") 4k sufficed for fast-scan codes of 4 dimensions each, 8k for the default's 32 (1024 dimensions);
# 32k re-ranks 320 rows a query (1.3 MB of float16 at 1024 dimensions). Past it finer codes are the cheaper
# way to recall: on 100,000 x 64 clips in 64 tight groups, IVF512,PQ16x4fs reached 0.30 with a 32k shortlist,
# IVF512,SQ8 0.995 with 4k (docs/knn.md, "Index types").
SHORTLISTS = (4, 8, 16, 32)
# A longer shortlist is kept when it reaches the target with at most this share of the knob (nprobe, efSearch).
KNOB_SAVING = 0.75


@dataclass(frozen=True)
class TuningQueries:
    """Sampled query rows with their exact neighbours, measured once and reused for every setting tried."""

    rows: np.ndarray
    vectors: np.ndarray
    truth: np.ndarray
    k: int


def tuning_queries(vectors: RowVectors, seed: int, excluded: set[int], first_row: int = 0) -> TuningQueries | None:
    """Queries from rows at or after `first_row` (an update: the new rows, where a shift shows); None when
    there are too few rows to measure recall."""
    rows = np.array([r for r in range(first_row, len(vectors)) if r not in excluded], dtype=np.int64)
    k = min(TUNE_K, len(vectors) - len(excluded) - 1)
    if k < 1 or not len(rows):
        return None
    chosen = np.random.default_rng(seed).choice(rows, size=min(TUNE_QUERIES, len(rows)), replace=False)
    queries = vectors.gather(chosen)
    _, truth = exact_search(vectors, queries, k, excluded, exclude_rows=chosen)
    return TuningQueries(chosen, queries, truth, k)


def recall_at(searcher: Searcher, queries: TuningQueries, shortlist: int, **knobs: int) -> float:
    _, found = searcher.search(queries.vectors, queries.k, exclude_rows=queries.rows, shortlist=shortlist, **knobs)
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
                          for f, t in zip(found, queries.truth)]))


def _tune_knob(searcher: Searcher, knob: SearchKnob, queries: TuningQueries, shortlist: int,
               target: float, ceiling: int = 0) -> tuple[float, int, dict[str, float]]:
    """(best recall, its knob value, the curve): the cheapest value reaching `target`, else the best tried
    (values above `ceiling`, when given, are not tried)."""
    curve: dict[str, float] = {}

    def measured(value: int) -> float:
        recall = recall_at(searcher, queries, shortlist, **{knob.key: value})
        curve[str(value)] = round(recall, 4)
        return recall

    best, below = (-1.0, knob.ladder[0]), 0
    ladder = sorted({*(v for v in knob.ladder if v <= ceiling), ceiling}) if ceiling else knob.ladder
    for value in ladder:
        recall = measured(value)
        if recall > best[0]:
            best = (recall, value)
        if recall >= target:
            break
        below = value
    for _ in range(TUNE_BISECTIONS if best[0] >= target and below else 0):  # between the last miss and the hit
        middle = (below + best[1]) // 2
        if middle in (below, best[1]):
            break
        recall = measured(middle)
        if recall >= target:
            best = (recall, middle)
        else:
            below = middle
    return best[0], best[1], curve


def tune(searcher: Searcher, queries: TuningQueries | None, first_shortlist: int, target: float) -> dict[str, Any]:
    """Search settings: the cheapest knob value whose recall@10 reaches `target`, and the shortlist it needs
    (from `first_shortlist`); a longer shortlist is kept while it saves a quarter of the knob or more, since
    scanning lists costs more than re-ranking rows. The best pair tried when none reaches the target."""
    settings: dict[str, Any] = {"shortlist": first_shortlist}
    knob = searcher.layout.knob
    if queries is None or knob is None:
        return settings
    best: dict[str, Any] = {}
    for shortlist in (first_shortlist, *(s for s in SHORTLISTS if s > first_shortlist)):
        reached = best.get("recall_at_10", 0.0) >= target
        ceiling = int(best[knob.key] * KNOB_SAVING) if reached else 0
        if reached and ceiling < knob.ladder[0]:
            break
        recall, value, curve = _tune_knob(searcher, knob, queries, shortlist, target, ceiling)
        if reached and recall < target:
            break
        if not best or recall > best["recall_at_10"] or recall >= target:
            best = {"shortlist": shortlist, knob.key: value, "recall_at_10": round(recall, 4),
                    "tuning_queries": int(len(queries.rows)), "recall_curve": curve}
    return best
