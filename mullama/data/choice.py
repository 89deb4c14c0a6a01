"""Multiple-choice question files: a JSON list of {audio_name, question, options, answer, kind}.

`answer` is the index of the right option; `kind` (optional) names what is asked (instrument, tempo...),
so accuracy can be reported per kind.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from mullama.data.jsonfile import read_json_list
from mullama.durable import write_atomic
from mullama.errors import MullamaError

MAX_OPTIONS = len(string.ascii_uppercase)  # options are lettered A, B, C...


@dataclass(frozen=True)
class ChoiceItem:
    audio_name: str
    question: str
    options: tuple[str, ...]
    answer: int
    kind: str = ""

    def prompt(self) -> str:
        """The question followed by its lettered options, one per line (as MuChoMusic shows them)."""
        letters = string.ascii_uppercase
        return self.question + "\n" + "\n".join(f"({letters[i]}) {option}" for i, option in enumerate(self.options))


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    items = []
    for number, raw in enumerate(read_json_list(Path(path), "multiple-choice file")):
        try:
            options = raw["options"]
            if not isinstance(options, list):
                raise TypeError
            item = ChoiceItem(str(raw["audio_name"]), str(raw["question"]), tuple(str(o) for o in options),
                              int(raw["answer"]), str(raw.get("kind", "")))
        except (KeyError, TypeError, ValueError):
            raise MullamaError(f"{path}: item {number} needs audio_name, question, options (a list) and answer "
                               "(the right option's index)") from None
        if not 2 <= len(item.options) <= MAX_OPTIONS or not 0 <= item.answer < len(item.options):
            raise MullamaError(f"{path}: item {number} needs 2 to {MAX_OPTIONS} options and an answer index among "
                               "them")
        items.append(item)
    if not items:
        raise MullamaError(f"multiple-choice file {path} holds no questions")
    return items


def write_choice_items(path: str | Path, items: list[ChoiceItem]) -> None:
    write_atomic(path, json.dumps([{"audio_name": i.audio_name, "question": i.question, "options": list(i.options),
                                    "answer": i.answer, "kind": i.kind} for i in items], indent=1).encode())
