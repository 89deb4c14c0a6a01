"""Helpers shared by the tests: synthetic audio and store inspection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


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
    return commits.is_dir() and any("special" not in p.name for p in commits.glob("*.json"))


def committed_clip_rows(store) -> int:
    """Catalog rows over every commit, the special silence clip aside: a duplicate would count twice."""
    from mullama.store import SILENCE_CLIP

    return sum(r.clip_id != SILENCE_CLIP for commit in store.commits() for r in commit.clips)
