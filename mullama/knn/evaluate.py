"""`mullama index eval`: recall against exact search, and how often neighbours share a label.

Label metrics (docs/knn.md, "Evaluating an index"): for every labelled query clip, its k nearest
neighbours, skipping clips of the same source (another rendering of one piece would make agreement
trivial). precision@k is the share of those neighbours with the query's value; nDCG@k weighs each
agreeing neighbour by 1/log2(rank + 1) against the best possible order. Word queries of a text index
(`--queries`) are scored the same way against the label value each asks for.
"""

from __future__ import annotations

import collections
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mullama.config import validate
from mullama.errors import MullamaError
from mullama.knn.clip_index import ClipIndex, RowVectors, exact_search, index_url
from mullama.knn.config import IndexEvalConfig
from mullama.knn.files import IndexFolder
from mullama.knn.recipes import Recipe, parse_recipe
from mullama.store.feature_store import FeatureStore

Labels = dict[str, dict[str, str]]  # label name -> clip id -> value


def _csv_rows(path: Path, option: str, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(line number, cells) of a CSV with those columns, each cell stripped and required non-empty."""
    if not path.is_file():
        raise MullamaError(f"{option} file {path} does not exist")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a BOM, as spreadsheets write, is no column
            reader = csv.DictReader(handle)
            missing = set(columns) - set(reader.fieldnames or [])
            if missing:
                raise MullamaError(f"{option} {path} lacks column(s) {', '.join(sorted(missing))}; write "
                                   f"{','.join(columns)}")
            for row in reader:
                cells = [(row[name] or "").strip() for name in columns]
                if not any(cells):
                    continue  # a blank line
                empty = [name for name, cell in zip(columns, cells) if not cell]
                if empty:
                    raise MullamaError(f"{option} {path} line {reader.line_num}: empty {', '.join(empty)}; every row "
                                       f"needs {','.join(columns)}")
                rows.append((reader.line_num, cells))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MullamaError(f"{option} {path} is not a readable CSV ({exc})") from None
    return rows


def read_labels(path: str | Path) -> Labels:
    """A CSV with columns clip_id, label_name, value (one row per clip and label; a repeated row counts once,
    two values of one label for a clip are refused)."""
    labels: Labels = {}
    for line, (clip_id, name, value) in _csv_rows(Path(path), "--labels", ("clip_id", "label_name", "value")):
        known = labels.setdefault(name, {}).setdefault(clip_id, value)
        if known != value:
            raise MullamaError(f"--labels {path} line {line}: clip {clip_id} has {name} {known!r} already, now "
                               f"{value!r}; give one value per clip and label")
    return labels


WordQuery = tuple[str, str, str]  # words, label name, value


def read_word_queries(path: str | Path) -> list[WordQuery]:
    """A CSV with columns query, label_name, value: the words and the label value a clip must have to answer
    them. A repeated row counts once; no rows at all is refused."""
    rows = _csv_rows(Path(path), "--queries", ("query", "label_name", "value"))
    queries = list(dict.fromkeys((query, name, value) for _, (query, name, value) in rows))
    if not queries:
        raise MullamaError(f"--queries file {path} holds no queries; write query,label_name,value rows")
    return queries


def word_metrics(found: list[list[str]], wanted: list[str], values: dict[str, str], indexed: set[str],
                 k: int) -> dict[str, float]:
    """precision@k and nDCG@k of word queries on one label: `found[i]` (best first) should hold clips of value
    `wanted[i]`; the ideal order puts every indexed clip of that value first."""
    population = collections.Counter(value for clip, value in values.items() if clip in indexed)
    precisions, gains = [], []
    for clips, value in zip(found, wanted):
        hits = [1.0 if values.get(c) == value else 0.0 for c in clips[:k]]
        precisions.append(sum(hits) / k)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, population[value])))
        gains.append(sum(h / math.log2(rank + 2) for rank, h in enumerate(hits)) / ideal if ideal else 0.0)
    return {"queries": len(precisions), "precision": float(np.mean(precisions)), "ndcg": float(np.mean(gains))}


def label_metrics(query_ids: list[str], neighbour_ids: list[list[str]], values: dict[str, str],
                  groups: dict[str, str] | None, k: int) -> dict[str, float]:
    """precision@k and nDCG@k of agreement on one label; neighbours lists are best first and may run longer
    than k (same-source ones are skipped before counting k)."""
    precisions, gains = [], []
    population = collections.Counter(values.values())
    same_group = collections.Counter((value, groups.get(clip)) for clip, value in values.items()) if groups else None
    for query, found in zip(query_ids, neighbour_ids):
        if query not in values:
            continue
        group = groups.get(query) if groups else None
        kept = [c for c in found if c != query and (group is None or groups.get(c) != group)][:k]  # type: ignore[union-attr]
        hits = [1.0 if values.get(c) == values[query] else 0.0 for c in kept]
        precisions.append(sum(hits) / k)
        same = population[values[query]] - 1  # other clips that could agree...
        if same_group is not None and group is not None:
            same -= same_group[(values[query], group)] - 1  # ...that are not of the query's source
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, max(0, same))))
        gains.append(sum(h / math.log2(rank + 2) for rank, h in enumerate(hits)) / ideal if ideal else 0.0)
    if not precisions:
        return {"queries": 0, "precision": float("nan"), "ndcg": float("nan")}
    return {"queries": len(precisions), "precision": float(np.mean(precisions)), "ndcg": float(np.mean(gains))}


@dataclass
class EvalReport:
    k: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per index or recipe
    notes: list[str] = field(default_factory=list)
    as_json: bool = False
    exit_code: int = 0

    def lines(self) -> list[str]:
        if self.as_json:

            return [json.dumps({"k": self.k, "rows": self.rows, "notes": self.notes}, indent=1)]
        label_names = sorted({name for row in self.rows for name in row.get("labels", {})})
        header = ["what", "recipe", f"recall@{self.k}"] + [f"{n} P@{self.k} / nDCG@{self.k}" for n in label_names]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows:
            cells = [row["what"], row["recipe"], f"{row['recall']:.3f}" if row.get("recall") is not None else "-"]
            for name in label_names:
                m = row.get("labels", {}).get(name)
                cells.append(f"{m['precision']:.3f} / {m['ndcg']:.3f}" if m and m["queries"] else "-")
            lines.append("| " + " | ".join(cells) + " |")
        return lines + [f"note: {note}" for note in self.notes]


def _label_rows(labels: Labels, same_source: str, clip_ids: list[str], neighbours: list[list[str]],
                k: int) -> dict[str, dict[str, float]]:
    groups = labels.get(same_source)
    return {name: label_metrics(clip_ids, neighbours, values, groups, k)
            for name, values in sorted(labels.items()) if name != same_source}


def _search_depth(labels: Labels, same_source: str, k: int) -> int:
    """Enough neighbours to fill k after skipping the query's own source."""
    groups = labels.get(same_source, {})
    sizes: dict[str, int] = {}
    for value in groups.values():
        sizes[value] = sizes.get(value, 0) + 1
    return k + min(1000, max(sizes.values()) if sizes else 0)


def evaluate_index(config: IndexEvalConfig) -> EvalReport:

    validate(config)
    labels = read_labels(config.labels) if config.labels else {}
    if config.queries and not labels:
        raise MullamaError("--queries needs --labels: the label values its rows ask for are read from there")
    word_queries = read_word_queries(config.queries) if config.queries else []
    _check_asked(word_queries, labels, config)
    report = EvalReport(config.k, as_json=config.json)
    if labels and config.same_source not in labels:
        report.notes.append(f"no {config.same_source!r} label in {config.labels}: same-source neighbours are counted")
    index, store = _open(config)
    depth = _search_depth(labels, config.same_source, config.k)
    if index is not None:
        report.rows.append(_index_row(index, labels, config, depth))
    if word_queries:
        report.rows.append(_words_row(index, word_queries, labels, config, report.notes))
    if config.recipe:
        if store is None:
            raise MullamaError("--recipe needs the feature store: give it as INDEX or with --store")
        for text in config.recipe:
            report.rows.append(_recipe_row(store, parse_recipe(text, store.encoder), labels, config, depth))
    if not report.rows:
        raise MullamaError(f"nothing to evaluate: {config.index} has no index named {config.name!r}; build one or "
                           "give --recipe")
    return report


def _open(config: IndexEvalConfig) -> tuple[ClipIndex | None, FeatureStore | None]:

    url = index_url(config.index, config.name)
    index = ClipIndex.open(url) if IndexFolder(url).exists() else None
    store_url = config.store or (config.index if url != config.index else "") or \
        (index.metadata.store.get("url", "") if index else "")
    store = None
    if store_url:
        try:
            store = FeatureStore.open(store_url)
        except MullamaError:
            if config.store or config.recipe:
                raise
    if index is not None and store is not None:
        index.check_store(store)
    return index, store


def _index_row(index: ClipIndex, labels: Labels, config: IndexEvalConfig, depth: int) -> dict[str, Any]:
    vectors = index.searcher.vectors
    excluded = set(index.metadata.masked_rows)
    rows = np.array(sorted(index.rows_by_clip.values()), dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(rows, size=min(config.recall_queries, len(rows)), replace=False))
    k = min(config.k, max(1, len(rows) - 1))
    queries = vectors.gather(sample)
    _, truth = exact_search(vectors, queries, k, excluded, exclude_rows=sample)
    _, found = index.search_vectors(queries, k, exclude_rows=sample)
    recall = float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum())
                            for f, t in zip(found, truth)]))
    row: dict[str, Any] = {"what": f"index {index.metadata.name} ({index.metadata.factory})",
                           "recipe": index.recipe.name, "recall": recall, "recall_queries": int(len(sample))}
    if labels:
        ids = [c for c in sorted(index.rows_by_clip) if any(c in values for values in labels.values())]
        query_rows = np.array([index.rows_by_clip[c] for c in ids], dtype=np.int64)
        scores, found = index.search_vectors(index.vectors(query_rows), depth, exclude_rows=query_rows)
        neighbours = [[n.clip_id for n in hits] for hits in index.neighbours(scores, found)]
        row["labels"] = _label_rows(labels, config.same_source, ids, neighbours, config.k)
    return row


def _words_row(index: ClipIndex | None, queries: list[WordQuery], labels: Labels, config: IndexEvalConfig,
               notes: list[str]) -> dict[str, Any]:
    """Each word query's k clips, scored against the label value it asks for, per label name."""
    if index is None or not index.metadata.recipe.is_text:
        what = f"has no index {config.name!r}" if index is None else \
            f"index {config.name!r} indexes audio stacks, not captions"
        raise MullamaError(f"--queries needs a text index, and {config.index} {what}; build one with "
                           "`mullama index build STORE --captions captions.jsonl --name NAME`")
    indexed = set(index.rows_by_clip)
    if not any(clip in indexed for values in labels.values() for clip in values):
        raise MullamaError(f"none of the clips in --labels {config.labels} is in index {config.name!r}; give the "
                           "labels of the clips it holds")
    unanswerable = sorted({(name, value) for _, name, value in queries
                           if not any(v == value and c in indexed for c, v in labels[name].items())})
    if unanswerable:
        notes.append("no indexed clip has " + ", ".join(f"{n} {v!r}" for n, v in unanswerable) +
                     ": queries asking for it score 0")
    found = [[n.clip_id for n in hits] for hits in index.search(texts=[q for q, _, _ in queries], k=config.k)]
    metrics = {}
    for name in sorted({name for _, name, _ in queries}):
        mine = [i for i, query in enumerate(queries) if query[1] == name]
        metrics[name] = word_metrics([found[i] for i in mine], [queries[i][2] for i in mine], labels[name],
                                     indexed, config.k)
    return {"what": f"words ({len(queries)} queries)", "recipe": index.recipe.name, "recall": None,
            "labels": metrics}


def _check_asked(queries: list[WordQuery], labels: Labels, config: IndexEvalConfig) -> None:
    """Every label name and value a query asks for is one --labels gives some clip (a typo would score 0)."""
    for query, name, value in queries:
        if name not in labels:
            raise MullamaError(f"--queries {config.queries}: {query!r} asks for label {name!r}, which --labels "
                               f"{config.labels} lacks (it has {', '.join(sorted(labels))})")
        if value not in set(labels[name].values()):
            raise MullamaError(f"--queries {config.queries}: {query!r} asks for {name} {value!r}, which no clip "
                               f"of --labels {config.labels} has")


def _recipe_row(store: FeatureStore, recipe: Recipe, labels: Labels, config: IndexEvalConfig,
                depth: int) -> dict[str, Any]:
    """Exact search over every stored clip embedded with `recipe` (recall 1 by definition)."""
    ids = store.clip_ids()
    vectors = np.concatenate([recipe.embed(stacks) for _, stacks in store.iter_batches(256, ids)]) if ids else \
        np.zeros((0, store.stack_shape[1]), dtype=np.float32)
    row: dict[str, Any] = {"what": "exact search", "recipe": recipe.name, "recall": 1.0}
    if labels:
        position = {c: i for i, c in enumerate(ids)}
        query_ids = [c for c in ids if any(c in values for values in labels.values())]
        query_rows = np.array([position[c] for c in query_ids], dtype=np.int64)
        _, found = exact_search(RowVectors([vectors]), vectors[query_rows], min(depth, len(ids)),
                                exclude_rows=query_rows)
        neighbours = [[ids[r] for r in hits if r >= 0] for hits in found]
        row["labels"] = _label_rows(labels, config.same_source, query_ids, neighbours, config.k)
    return row
