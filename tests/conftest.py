"""Shared fixtures: tiny random MERT folders and small synthetic audio collections."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tone(seconds: float, rate: int, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise: cheap, deterministic, not silence."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3)) * 0.3
    wave = wave + 0.01 * rng.standard_normal(t.shape)
    wave = wave.astype(np.float32)
    return np.stack([wave, wave * 0.8], axis=1) if channels == 2 else wave


def write_tone(path: Path, seconds: float, rate: int = 44100, freq: float = 220.0, channels: int = 1,
               seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate, freq, channels, seed), rate)
    return path


def data_committed(commits: Path) -> bool:
    """A partition of clips (not the store's special silence partition) has been committed."""
    return commits.is_dir() and any(not p.name.startswith("special") for p in commits.glob("*.json"))


def committed_clip_rows(store) -> int:
    """Catalog rows over every commit, the special silence clip aside: a duplicate would count twice."""
    from mullama.store import SILENCE_CLIP

    return sum(r.clip_id != SILENCE_CLIP for commit in store.commits() for r in commit.clips)


@pytest.fixture(scope="session")
def tiny_mert(tmp_path_factory) -> Path:
    from mullama.extract.init_mert import write_random_mert

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
    from mullama.model.init_llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_gqa_llama(tmp_path_factory) -> Path:
    """The tiny LLaMA with grouped-query attention: 4 query heads over 2 key/value heads."""
    from mullama.model.init_llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny-gqa", "tiny", seed=1, kv_heads=2)
