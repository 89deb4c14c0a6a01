"""The kNN answer baseline: each question answered with the reference answer that the nearest training clip
got to the same question (docs/evaluation.md). It listens only through the index's vectors, so a model
must beat it to show that it uses more of the music than "which known track is this closest to"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mullama.data.musicqa import QAPair
from mullama.errors import MullamaError
from mullama.knn.clip_index import ClipIndex
from mullama.store.feature_store import FeatureStore


@dataclass(frozen=True)
class BaselineAnswer:
    pair: QAPair
    answer: str  # "" when no training clip was asked this question
    neighbour: str  # the training clip whose answer was taken
    score: float


def _query_vectors(index: ClipIndex, clip_ids: list[str], store: FeatureStore | None) -> np.ndarray:
    """Index vectors of indexed clips; the others embedded from the store with the index's recipe."""
    out = np.empty((len(clip_ids), index.metadata.dim), dtype=np.float32)
    missing = [i for i, clip in enumerate(clip_ids) if clip not in index.rows_by_clip]
    present = [i for i in range(len(clip_ids)) if i not in set(missing)]
    if present:
        out[present] = index.vectors(np.array([index.rows_by_clip[clip_ids[i]] for i in present]))
    if missing:
        if store is None:
            raise MullamaError(f"clip {clip_ids[missing[0]]!r} is not in the index; give the store to embed it")
        absent = [clip_ids[i] for i in missing if clip_ids[i] not in store]
        if absent:
            raise MullamaError(f"clip {absent[0]!r} is neither in the index nor in store {store.location.url}")
        out[missing] = index.embed(store.get([clip_ids[i] for i in missing]), store.encoder)
    return out


def knn_answers(index: ClipIndex, train: list[QAPair], questions: list[QAPair],
                store: FeatureStore | None = None) -> list[BaselineAnswer]:
    """One answer per pair of `questions`, in order. Neighbours are found by exact inner product among the
    indexed training clips that were asked the same question (the query clip itself excluded)."""
    answers_by_question: dict[str, dict[str, str]] = {}
    for pair in train:
        if pair.audio_name in index.rows_by_clip:
            answers_by_question.setdefault(pair.question, {}).setdefault(pair.audio_name, pair.answer)
    query_clips = sorted({p.audio_name for p in questions})
    queries = _query_vectors(index, query_clips, store)
    position = {clip: i for i, clip in enumerate(query_clips)}
    results: list[BaselineAnswer | None] = [None] * len(questions)
    asked: dict[str, list[int]] = {}
    for number, pair in enumerate(questions):
        asked.setdefault(pair.question, []).append(number)
    for question, numbers in asked.items():  # one matrix product per question
        known = answers_by_question.get(question, {})
        clips = sorted(known)
        if clips:
            candidates = index.vectors(np.array([index.rows_by_clip[c] for c in clips]))
            scores = queries[[position[questions[n].audio_name] for n in numbers]] @ candidates.T
        for line, number in enumerate(numbers):
            pair = questions[number]
            row = scores[line].copy() if clips else np.zeros(0)
            if pair.audio_name in known:
                row[clips.index(pair.audio_name)] = -np.inf  # never the query clip itself
            if not np.isfinite(row).any():
                results[number] = BaselineAnswer(pair, "", "", float("nan"))
                continue
            best = int(np.argmax(row))
            results[number] = BaselineAnswer(pair, known[clips[best]], clips[best], float(row[best]))
    return [r for r in results if r is not None]
