"""What every frozen music decoder offers, and how a decoder family registers (music/decoders.py keeps the
registry): a new family is one module that defines its decoder and a `DecoderFamily`, plus one registration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from mullama.music.space import ConditioningSpace


class MusicDecoder(Protocol):
    """A frozen decoder: conditioning rows in its text encoder's space in, audio out. Nothing in it trains."""

    kind: str  # the registered kind of its folder (music/decoders.py)
    space: ConditioningSpace
    sampling_keywords: tuple[str, ...]  # the sampling settings `generate` takes beyond seconds, guidance and seed

    @property
    def sampling_rate(self) -> int: ...

    @property
    def max_seconds(self) -> float: ...

    def row_count(self, length: int) -> int:
        """Rows of a conditioning with `length` text-encoder rows (a decoder may add rows of its own)."""

    def text_conditioning(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """((B, row_count(length), width) float32, (B, row_count(length)) bool): the decoder's own conditioning of
        each text, as the generator learns to predict it (the training targets)."""

    def generate(self, conditioning: np.ndarray | torch.Tensor, seconds: float, *, seed: int | None = None,
                 melody: Sequence[np.ndarray] | None = None, melody_rate: int = 0, **sampling: Any) -> np.ndarray:
        """(B, samples) float32 audio at `sampling_rate` from (B, rows, width) conditioning rows; `melody`: one
        recording per row to follow, for a kind that can (the registry says which)."""


@dataclass(frozen=True)
class DecoderKind:
    """One kind of decoder folder."""

    name: str  # as the folder's own config names it: musicgen, musicgen_melody, audioldm2
    described: str  # how a message names it
    follows_recording: bool  # generation can follow an input recording's melody (what editing needs)


@dataclass(frozen=True)
class DecoderFamily:
    """One family of decoder folders, told apart, read and loaded by its own module."""

    kinds: tuple[DecoderKind, ...]
    detect: Callable[[Path], str | None]  # the folder's kind, None when it is not this family's (read, not loaded)
    read_space: Callable[[Path], ConditioningSpace]  # before any weight loads
    load: Callable[[Path, str, bool], MusicDecoder]  # (folder, device, show progress)
