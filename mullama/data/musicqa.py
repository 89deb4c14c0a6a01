"""MusicQA JSON: a list of {"audio_name", "conversation": [{"from": "human"}, {"from": "gpt"}]}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mullama.data.jsonfile import iter_json_list
from mullama.errors import MullamaError


@dataclass(frozen=True)
class QAPair:
    audio_name: str
    question: str
    answer: str


def read_musicqa(path: str | Path) -> list[QAPair]:
    """Read every human/gpt turn pair of a MusicQA file."""
    return list(iter_musicqa(path))


def iter_musicqa(path: str | Path) -> Iterator[QAPair]:
    """Every human/gpt turn pair of a MusicQA file, item by item (a 1M-clip file is never held parsed whole)."""
    path = Path(path)
    for number, item in enumerate(iter_json_list(path, "MusicQA file")):
        try:
            name, turns = item["audio_name"], item["conversation"]
        except (KeyError, TypeError):
            raise MullamaError(f"{path}: item {number} lacks audio_name or conversation") from None
        if not isinstance(turns, list):
            raise MullamaError(f"{path}: item {number}: conversation must be a list of turns")
        try:
            pairs = [QAPair(str(name), str(question["value"]), str(answer["value"]))
                     for question, answer in zip(turns[0::2], turns[1::2])]
        except (KeyError, TypeError):
            raise MullamaError(f"{path}: item {number}: every conversation turn needs a 'value'") from None
        yield from pairs


def write_musicqa(path: str | Path, pairs: Iterable[QAPair]) -> None:
    """One item per pair, as the released MusicQA files are laid out."""
    items = [{"audio_name": p.audio_name,
              "conversation": [{"from": "human", "value": p.question}, {"from": "gpt", "value": p.answer}]}
             for p in pairs]
    Path(path).write_text(json.dumps(items, indent=1, ensure_ascii=False))
