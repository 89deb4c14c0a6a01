"""Generated audio as the bytes of a WAV or FLAC file: what `mullama generate` writes and the server returns."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from mullama.durable import write_atomic

FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}


def audio_bytes(audio: np.ndarray, rate: int, suffix: str = ".wav") -> bytes:
    """16-bit WAV or FLAC bytes of mono float audio (clipped to [-1, 1]: the decoder may overshoot)."""
    kind, subtype = FORMATS[suffix.lower()]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.nan_to_num(audio), -1.0, 1.0), rate, format=kind, subtype=subtype)
    return buffer.getvalue()


def write_audio(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """The whole file or nothing: a kill while writing never leaves a half file under the final name."""
    path = Path(path)
    write_atomic(path, audio_bytes(audio, rate, path.suffix))
