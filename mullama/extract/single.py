"""One audio file to its clip stack, exactly as extraction would store it (for queries by audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mullama.errors import MullamaError
from mullama.extract.audio import AudioError, load_audio, split_windows
from mullama.extract.encoder import MertEncoder


def clip_stack(encoder: MertEncoder, path: str | Path, window_seconds: float, min_window_seconds: float,
               dtype: str = "float16") -> np.ndarray:
    """(L+1, H) float32: the mean of the file's window stacks, rounded through the store's dtype."""
    rate = encoder.sample_rate
    receptive = encoder.geometry.receptive_field
    try:
        audio = load_audio(path, rate, receptive)
    except AudioError as exc:
        raise MullamaError(f"cannot use {path} as a query: {exc}") from None
    windows = split_windows(audio, int(round(window_seconds * rate)),
                            max(receptive, int(round(min_window_seconds * rate))))
    stacks = np.concatenate([encoder.encode([window]) for window in windows])
    return stacks.astype(np.float32).mean(axis=0).astype(dtype).astype(np.float32)
