"""Listening test: does the model answer from the audio, or from the question alone?

Asks a question whose answer only the audio reveals (here: which instrument plays) on held-out
clips, three times: with each clip's own stack, with stacks shuffled between clips, and with the
stack of silence (an image or a video: with its own and with another clip's). A model that listens is
right well above chance only with its own stacks (docs/evaluation.md: text metrics alone do not show this).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from mullama.encoder_identity import AUDIO
from mullama.store import FeatureStore

INSTRUMENT_QUESTION = "What instrument is playing?"


def mentioned(answer: str, labels: Sequence[str]) -> list[str]:
    """Labels named in the answer (whole words, case-insensitive)."""
    return [label for label in labels if re.search(rf"\b{re.escape(label)}\b", answer, re.IGNORECASE)]


def derangement(count: int, seed: int) -> list[int]:
    """A permutation moving every index (each clip gets another clip's stack)."""
    if count < 2:
        return list(range(count))
    rng = random.Random(seed)
    while True:
        order = list(range(count))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


@dataclass
class ListeningResult:
    question: str
    clips: int
    labels: list[str]
    accuracy: dict[str, float] = field(default_factory=dict)  # condition -> share of right answers
    answers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.labels)


def score(answers: list[str], truths: list[str], labels: Sequence[str]) -> float:
    """Right = the true label is the only label the answer names."""
    return sum(mentioned(a, labels) == [t] for a, t in zip(answers, truths)) / len(truths)


def listening_test(model: Any, store: FeatureStore, clip_labels: dict[str, str], question: str = INSTRUMENT_QUESTION,
                   seed: int = 0, batch_size: int = 16, progress: bool = False) -> ListeningResult:
    """Greedy answers to `question` with true, shuffled and (audio stores) silent stacks of the given clips. An
    image or video store's matrices go to the model's branch of that modality."""
    clip_ids = sorted(clip_labels)
    truths = [clip_labels[c] for c in clip_ids]
    labels = sorted(set(clip_labels.values()))
    stacks = store.get(clip_ids).astype(np.float32)
    conditions = {"true": stacks, "shuffled": stacks[derangement(len(clip_ids), seed)]}
    modality = store.encoder.modality
    if modality == AUDIO:
        conditions["silence"] = np.repeat(store.silence_stack().astype(np.float32)[None], len(clip_ids), axis=0)
    branched = bool(model.config.branches)
    result = ListeningResult(question, len(clip_ids), labels)
    bar = tqdm(total=len(conditions) * len(clip_ids), unit="answer", desc="listening test", disable=not progress,
               dynamic_ncols=True)
    with bar:
        for name, condition in conditions.items():
            answers: list[str] = []
            for start in range(0, len(clip_ids), batch_size):
                chunk = condition[start:start + batch_size]
                answers += model.answer_batch({modality: chunk} if branched else chunk, [question] * len(chunk),
                                              temperature=0.0, max_new_tokens=24)
                bar.update(len(chunk))
            result.answers[name] = answers
            result.accuracy[name] = score(answers, truths, labels)
    return result
