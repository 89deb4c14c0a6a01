"""Prompt formats and the tokenisation training uses (docs/prompt.md)."""

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from mullama.errors import MullamaError
from mullama.model.prompts import (
    IGNORE_INDEX,
    TokenizedExample,
    format_prompt,
    pad_left,
    pad_right,
    prompt_ids,
    tokenize_example,
)

PUBLISHED_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.\n\n### Instruction:\n{question}\n\n"
               "### Input:\n<built-in function input>\n\n### Response:")


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def test_mu_llama_prompt_is_the_published_text_and_clean_drops_the_accident():
    assert format_prompt("Describe the audio") == PUBLISHED_PROMPT.format(question="Describe the audio")
    assert format_prompt("What {key} is it?") == PUBLISHED_PROMPT.replace("{question}", "What {key} is it?")
    clean = format_prompt("Describe the audio", "clean")
    assert "<built-in function input>" not in clean and "### Input" not in clean
    assert clean.endswith("### Instruction:\nDescribe the audio\n\n### Response:")
    with pytest.raises(MullamaError, match="unknown prompt format"):
        format_prompt("x", "chatml")


def test_hf_tokenizer_matches_sentencepiece_like_the_published_code(tiny_llama, tokenizer):
    processor = spm.SentencePieceProcessor(model_file=str(tiny_llama / "tokenizer.model"))
    text = format_prompt("What is the tempo of this 120 bpm fiddle tune? é ♪")
    assert prompt_ids(tokenizer, "What is the tempo of this 120 bpm fiddle tune? é ♪") == [1] + processor.encode(text)
    assert tokenizer(text).input_ids == [1] + processor.encode(text)  # BOS added, EOS not, like LLaMA-2's


def test_labels_cover_the_answer_and_eos_only(tokenizer):
    example = tokenize_example(tokenizer, "Describe the audio", "A calm chorale.")
    prompt = prompt_ids(tokenizer, "Describe the audio")
    assert example.input_ids[0] == 1 and example.input_ids[-1] == 2
    assert example.input_ids[:len(prompt)] == prompt
    assert example.labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert example.labels[len(prompt):] == example.input_ids[len(prompt):]
    answer = tokenizer.decode(example.input_ids[len(prompt):], skip_special_tokens=True)
    assert answer.strip() == "A calm chorale."


def test_truncation_loses_the_eos(tokenizer):
    full = tokenize_example(tokenizer, "Describe the audio", "A calm chorale in four voices.")
    cut = tokenize_example(tokenizer, "Describe the audio", "A calm chorale in four voices.",
                           max_length=len(full.input_ids) - 2)
    assert len(cut.input_ids) == len(full.input_ids) - 2 and 2 not in cut.input_ids
    assert cut.input_ids == full.input_ids[:-2] and cut.labels == full.labels[:-2]


def test_padding_for_training_and_generation():
    batch = pad_right([TokenizedExample([1, 5, 6], [IGNORE_INDEX, 5, 6]), TokenizedExample([1, 7], [IGNORE_INDEX, 7])], pad_id=0)
    assert batch["input_ids"] == [[1, 5, 6], [1, 7, 0]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"] == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    left = pad_left([[1, 5, 6], [1, 7]], pad_id=2)
    assert left == {"input_ids": [[1, 5, 6], [2, 1, 7]], "attention_mask": [[1, 1, 1], [0, 1, 1]]}
