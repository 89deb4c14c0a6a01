"""Prompt formats (docs/prompt.md) and the tokenisation that training and generation share.

"mu-llama" is the exact prompt the released model was trained with, including the accidental
`<built-in function input>` line; use it with imported weights. "clean" is the same Alpaca instruction
without the input section, for adapters trained here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from mullama.errors import MullamaError

MU_LLAMA = "mu-llama"
CLEAN = "clean"
TEMPLATES = {
    MU_LLAMA: ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{question}\n\n### Input:\n<built-in function input>\n\n### Response:"),
    CLEAN: ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{question}\n\n### Response:"),
}
IGNORE_INDEX = -100


def check_format(style: str) -> str:
    if style not in TEMPLATES:
        raise MullamaError(f"unknown prompt format {style!r}; choose one of {', '.join(TEMPLATES)}")
    return style


def format_prompt(question: str, style: str = MU_LLAMA) -> str:
    """The prompt text; the answer follows '### Response:' directly."""
    return TEMPLATES[check_format(style)].format(question=question)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _special(tokenizer: Any, name: str) -> int:
    value = getattr(tokenizer, f"{name}_token_id", None)
    if value is None:
        raise MullamaError(f"the tokenizer has no {name} token")
    return int(value)


Turn = tuple[str, str]  # (question, answer) of an earlier turn of a conversation


def prompt_ids(tokenizer: Any, question: str, style: str = MU_LLAMA, history: Sequence[Turn] = ()) -> list[int]:
    """BOS + prompt tokens: what generation starts from. Earlier turns come first, each as the training
    sequence it would be (BOS + prompt + answer + EOS): the published model had no multi-turn format, and
    this one keeps every turn in the form the adapter was trained on."""
    earlier = [token for q, a in history for token in tokenize_example(tokenizer, q, a, style).input_ids]
    return earlier + [_special(tokenizer, "bos")] + _encode(tokenizer, format_prompt(question, style))


class Labelled(Protocol):
    """Anything with token ids and their labels (a tokenised pair, or one carrying its clip's stack)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence: labels equal input_ids on answer tokens (and EOS), IGNORE_INDEX elsewhere."""

    input_ids: list[int]
    labels: list[int]


def tokenize_example(tokenizer: Any, question: str, answer: str, style: str = MU_LLAMA,
                     max_length: int | None = None) -> TokenizedExample:
    """BOS + prompt + answer + EOS, truncated to max_length (the EOS is lost when truncated).

    Prompt and answer are tokenised together, as the published training did, and the first
    len(BOS + prompt) positions are masked, so the loss covers the answer only. An answer cut away
    entirely leaves no label at all: the trainer must skip or zero such a loss.
    """
    prompt = prompt_ids(tokenizer, question, style)
    full = [prompt[0]] + _encode(tokenizer, format_prompt(question, style) + answer) + [_special(tokenizer, "eos")]
    if max_length is not None:
        full = full[:max_length]
    labels = [IGNORE_INDEX if position < len(prompt) else token for position, token in enumerate(full)]
    return TokenizedExample(full, labels)


def pad_right(examples: Sequence[Labelled], pad_id: int = 0) -> dict[str, list[list[int]]]:
    """Training batch: right padding, attention_mask 0 and labels IGNORE_INDEX on padding."""
    width = max(len(e.input_ids) for e in examples)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        pad = width - len(e.input_ids)
        batch["input_ids"].append(e.input_ids + [pad_id] * pad)
        batch["attention_mask"].append([1] * len(e.input_ids) + [0] * pad)
        batch["labels"].append(e.labels + [IGNORE_INDEX] * pad)
    return batch


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> dict[str, list[list[int]]]:
    """Generation batch: left padding, so every prompt ends where generation starts."""
    width = max(len(s) for s in sequences)
    return {"input_ids": [[pad_id] * (width - len(s)) + list(s) for s in sequences],
            "attention_mask": [[0] * (width - len(s)) + [1] * len(s) for s in sequences]}
