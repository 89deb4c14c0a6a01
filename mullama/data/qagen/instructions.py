"""The two requests made for every clip, and how their answers are read and checked.

As MusicQA was made (docs/data-formats.md, "How MusicQA was generated"): one request answers the four fixed
description questions from the clip's caption or tags (sampled at temperature 0.5); the other writes five
numbered open question-answer pairs about tempo, mood, instruments, genre and what can be inferred
(temperature 0.4). The instruction texts are mullama's own. An answer is kept only if it parses into the
expected number of items and each passes `problems`; otherwise the request is asked again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from mullama.data.qagen.sources import CAPTION, SourceClip

DESCRIPTION_QUESTIONS = ("Describe the audio", "Describe the audio in detail", "What do you hear in the audio?",
                         "What can be inferred from the audio?")
OPEN_TOPICS = ("its tempo", "its mood", "its instruments", "its genre", "what can be inferred from it")
# Phrases of our instructions: an answer holding one repeats the prompt instead of answering it.
INSTRUCTION_MARKERS = ("number your answers", "write nothing else", "use exactly this form", "as if you had listened",
                       "<question>", "<answer>")
NUMBERED = re.compile(r"^\s*(\d{1,2})\s*[.):]\s*(.*)$")
ANSWER_LINE = re.compile(r"^\s*answer\s*[:.-]\s*(.*)$", re.IGNORECASE)

Pair = tuple[str, str]


@dataclass(frozen=True)
class Bounds:
    min_words: int = 2
    max_words: int = 150


def _about(clip: SourceClip) -> str:
    if clip.kind == CAPTION:
        return f"A music clip is described as follows:\n\"{clip.text}\""
    return f"A music clip is tagged: {clip.text}."


def description_prompt(clip: SourceClip) -> str:
    questions = "\n".join(f"{n}. {q}" for n, q in enumerate(DESCRIPTION_QUESTIONS, start=1))
    return (f"{_about(clip)}\n\nAnswer each of these four questions about the clip in one to three sentences, as "
            f"if you had listened to it. Number your answers 1 to 4 and write nothing else.\n{questions}")


def open_prompt(clip: SourceClip) -> str:
    topics = ", ".join(OPEN_TOPICS[:-1]) + f", and {OPEN_TOPICS[-1]}"
    return (f"{_about(clip)}\n\nWrite five different questions a listener could ask about this clip, each with its "
            f"answer: one each about {topics}. Use exactly this form for each, numbered 1 to 5:\n"
            "1. <question>\nAnswer: <answer>")


def _numbered_items(text: str) -> list[tuple[int, list[str]]]:
    items: list[tuple[int, list[str]]] = []
    for line in text.splitlines():
        match = NUMBERED.match(line)
        if match:
            items.append((int(match.group(1)), [match.group(2).strip()]))
        elif items and line.strip():
            items[-1][1].append(line.strip())
    return items


def parse_description(text: str) -> list[Pair]:
    """Answers numbered 1-4, one per fixed question (a leading copy of the question is dropped)."""
    pairs = []
    for (number, lines), question in zip(_numbered_items(text), DESCRIPTION_QUESTIONS):
        if number != len(pairs) + 1:
            break
        answer = " ".join(lines).strip()
        for prefix in (question, question.rstrip("?")):
            if answer.lower().startswith(prefix.lower()) and answer[len(prefix):len(prefix) + 1] in (":", "?"):
                answer = answer[len(prefix) + 1:].strip()
        pairs.append((question, answer))
    return pairs


def parse_open(text: str) -> list[Pair]:
    """`N. question` then `Answer: answer` (the answer may run over several lines)."""
    pairs = []
    for number, lines in _numbered_items(text):
        if number != len(pairs) + 1:
            break
        question, answer, in_answer = lines[0], [], False
        for line in lines[1:]:
            match = ANSWER_LINE.match(line)
            if match:
                in_answer = True
                answer.append(match.group(1))
            elif in_answer:
                answer.append(line)
            else:
                question += " " + line
        inline = re.split(r"\s+answer\s*:\s*", question, maxsplit=1, flags=re.IGNORECASE)
        if not answer and len(inline) == 2:
            question, answer = inline[0], [inline[1]]
        pairs.append((question.strip(), " ".join(answer).strip()))
    return pairs


def problems(pairs: list[Pair], expected: int, bounds: Bounds, open_questions: bool) -> str:
    """Why the parsed output is unusable ("" when it is fine)."""
    if len(pairs) != expected:
        return f"parsed {len(pairs)} of {expected} items"
    for number, (question, answer) in enumerate(pairs, start=1):
        words = len(answer.split())
        if not answer:
            return f"item {number} has an empty answer"
        if not bounds.min_words <= words <= bounds.max_words:
            return f"item {number}'s answer has {words} words (allowed {bounds.min_words}-{bounds.max_words})"
        lowered = f"{question} {answer}".lower()
        if any(marker in lowered for marker in INSTRUCTION_MARKERS) or answer.lower() == question.lower():
            return f"item {number} repeats the instructions"
        if open_questions and (len(question.split()) < 3 or not question.endswith("?")):
            return f"item {number}'s question is not a question ({question[:60]!r})"
    return ""


@dataclass(frozen=True)
class FailedRequest:
    """An output the LLM never gave (the endpoint failed, or its reply was no completion): it is asked again like
    an unusable answer, and the cause, not an empty parse, is what the failure log records."""

    reason: str


@dataclass(frozen=True)
class Request:
    name: str
    prompt: Callable[[SourceClip], str]
    parse: Callable[[str], list[Pair]]
    expected: int
    temperature: float  # as published
    open_questions: bool

    def check(self, output: str | FailedRequest, bounds: Bounds) -> tuple[list[Pair], str]:
        if isinstance(output, FailedRequest):
            return [], output.reason
        pairs = self.parse(output)
        return pairs, problems(pairs, self.expected, bounds, self.open_questions)


REQUESTS = (Request("description", description_prompt, parse_description, 4, 0.5, False),
            Request("open", open_prompt, parse_open, 5, 0.4, True))
