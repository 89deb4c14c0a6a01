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
    try:
        audio = load_audio(path, encoder.sample_rate, encoder.geometry.receptive_field)
    except AudioError as exc:
        raise MullamaError(f"cannot use {path} as a query: {exc}") from None
    return samples_stack(encoder, audio, window_seconds, min_window_seconds, dtype)


def samples_stack(encoder: MertEncoder, audio: np.ndarray, window_seconds: float, min_window_seconds: float,
                  dtype: str = "float16") -> np.ndarray:
    """clip_stack of audio already decoded to the encoder's rate (an upload)."""
    rate = encoder.sample_rate
    windows = split_windows(audio, int(round(window_seconds * rate)),
                            max(encoder.geometry.receptive_field, int(round(min_window_seconds * rate))))
    stacks = np.concatenate([encoder.encode([window]) for window in windows])
    return stacks.astype(np.float32).mean(axis=0).astype(dtype).astype(np.float32)
