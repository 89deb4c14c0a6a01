"""Multiple-choice question files: a JSON list of {audio_name, question, options, answer, kind}.

`answer` is the index of the right option; `kind` (optional) names what is asked (instrument, tempo...),
so accuracy can be reported per kind.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mullama.data.jsonfile import read_json_list
from mullama.durable import write_atomic
from mullama.errors import MullamaError

MAX_OPTIONS = len(string.ascii_uppercase)  # options are lettered A, B, C...
# Every option is scored as its own sequence of prompt (the question and all options) plus the option, whose
# logits are tokens x vocabulary floats: a 100,000-character option asked for 40 GB. MuChoMusic's questions are
# a sentence and its options a few words; at these bounds a 26-option prompt is about 15,000 characters (some 4,000
# tokens), still inside LLaMA-2's 4,096-token context.
MAX_QUESTION_CHARS = 2_000
MAX_OPTION_CHARS = 500


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


def _text_problem(value: object, what: str, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"{what} must be a non-empty text"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long; at most {limit} are read"
    return None


def _item_problem(raw: dict[str, Any]) -> str | None:
    """What makes one question unusable (a question every option of which is scored must offer distinct,
    bounded texts and point at one of them), or None."""
    options, answer = raw["options"], raw["answer"]
    if not isinstance(options, list):
        return "options must be a list"
    if not 2 <= len(options) <= MAX_OPTIONS:
        return f"needs 2 to {MAX_OPTIONS} options"
    if isinstance(answer, bool) or not isinstance(answer, int):
        return f"answer must be an integer (the right option's index), not {answer!r:.40}"
    if not 0 <= answer < len(options):
        return f"answer {answer} is not the index of one of its {len(options)} options"
    problems = [_text_problem(raw["question"], "question", MAX_QUESTION_CHARS)]
    problems += [_text_problem(option, f"option {number}", MAX_OPTION_CHARS) for number, option in enumerate(options)]
    if any(problems):
        return next(p for p in problems if p)
    seen: dict[str, int] = {}
    for number, option in enumerate(options):
        first = seen.setdefault(" ".join(option.casefold().split()), number)
        if first != number:
            return f"option {number} repeats option {first} ({option.strip()!r}); options must differ"
    return None


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    """Every question of the file; the first unusable one refuses the file, naming its number and cause."""
    items = []
    for number, raw in enumerate(read_json_list(Path(path), "multiple-choice file")):
        try:
            problem = _item_problem(raw) or ("" if "audio_name" in raw else "needs an audio_name")
        except (KeyError, TypeError):
            raise MullamaError(f"{path}: item {number} needs audio_name, question, options (a list) and answer "
                               "(the right option's index)") from None
        if problem:
            raise MullamaError(f"{path}: item {number} {problem}")
        items.append(ChoiceItem(str(raw["audio_name"]), raw["question"], tuple(raw["options"]), raw["answer"],
                                str(raw.get("kind", ""))))
    if not items:
        raise MullamaError(f"multiple-choice file {path} holds no questions")
    return items


def write_choice_items(path: str | Path, items: list[ChoiceItem]) -> None:
    write_atomic(path, json.dumps([{"audio_name": i.audio_name, "question": i.question, "options": list(i.options),
                                    "answer": i.answer, "kind": i.kind} for i in items], indent=1).encode())
