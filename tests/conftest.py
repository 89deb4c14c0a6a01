"""Shared fixtures: tiny random MERT and LLaMA folders and small synthetic audio collections."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write_tone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_mert(tmp_path_factory) -> Path:
    from mullama.fixtures.mert import write_random_mert

    return write_random_mert(tmp_path_factory.mktemp("mert") / "tiny", "tiny", seed=0)


@pytest.fixture
def audio_folder(tmp_path) -> Path:
    """Eight clips of distinct lengths, rates, channels and formats (WAV and FLAC)."""
    folder = tmp_path / "audio"
    specs = [(1.3, 44100, 1, "wav"), (2.0, 22050, 2, "flac"), (0.7, 48000, 1, "wav"), (3.1, 16000, 2, "wav"),
             (1.9, 24000, 1, "flac"), (2.6, 32000, 1, "wav"), (4.4, 44100, 2, "flac"), (0.9, 24000, 1, "wav")]
    for number, (seconds, rate, channels, extension) in enumerate(specs):
        write_tone(folder / f"set{number % 2}" / f"clip{number}.{extension}", seconds, rate,
                   110.0 * (number + 1), channels, seed=number)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-weight 4-layer LLaMA (64 wide, 4 heads) with a real SentencePiece tokenizer."""
    from mullama.fixtures.llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_gqa_llama(tmp_path_factory) -> Path:
    """The tiny LLaMA with grouped-query attention: 4 query heads over 2 key/value heads."""
    from mullama.fixtures.llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny-gqa", "tiny", seed=1, kv_heads=2)
