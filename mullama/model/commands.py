"""Typed configs of the model commands; light (no torch), so the CLI can import them at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import option


@dataclass
class InitLlamaConfig:
    out: str = option(help="Folder to write", argument=True)
    size: str = option("tiny", help="tiny (4 layers x 64, seconds), mini (8 x 128, the demo's) or 7b "
                                    "(LLaMA-2-7B shapes, ~13.5 GB of bf16)")
    tokenizer_corpus: str = option("", help="Text file or MusicQA JSON to train the SentencePiece tokenizer on "
                                            "(e.g. the demo corpus's qa_train.json); default: a built-in text")
    vocab_size: int = option(0, help="Tokenizer vocabulary to aim for (fewer when the corpus is small); "
                                     "0: 1024 for tiny, 32000 for 7b")
    kv_heads: int = option(0, help="Key/value heads for grouped-query attention; 0: one per attention head")
    seed: int = option(0, help="Random seed for the weights")


@dataclass
class ImportMuLlamaConfig:
    checkpoint: str = option(help="The released MU-LLaMA checkpoint (.pth)", argument=True)
    llama: str = option(help="Hugging Face LLaMA-2 folder the checkpoint was trained on")
    out: str = option(help="Adapter folder to write")
    mert: str = option("", help="MERT folder to pin as the encoder (default: pin only the 25 x 1024 stack shape)")
    query_len: int = option(1, help="Prompt vectors per adapted layer (1 in every released MU-LLaMA)")
    tolerance: float = option(1e-3, help="Relative tolerance when comparing the frozen LLaMA weights")
