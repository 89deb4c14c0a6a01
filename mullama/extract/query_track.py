"""One query track (a file, or audio already decoded) -> its stack, exactly as extraction stores it.

Asking about a file, querying an index with one, editing a recording and the server's uploads all need the
stack extraction would have stored for that input: the same decoding, windows, pooling, encoder precision and
store dtype. The encoder folder is checked against what the stack will meet (an adapter's or an index's
encoder) from its files alone, before any weights load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from mullama.data.manifest import ClipSource
from mullama.encoder_identity import AUDIO, EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.audio import split_windows
from mullama.extract.encoder import EncoderSpec, StackEncoder
from mullama.extract.kinds import read_encoder
from mullama.extract.reader import DecodeSettings
from mullama.store import StoreSettings

IdentityCheck = Callable[[EncoderIdentity], None]  # raises MullamaError for an encoder the stack must not come from


def read_checked(kind: str, folder: str | Path, check: IdentityCheck | None) -> EncoderSpec:
    """The folder's spec, its identity passed through `check` (None: nothing to match, e.g. a demo's own
    encoder) before any weights load."""
    spec = read_encoder(kind, folder)
    if check is not None:
        check(spec.identity)
    return spec


class QueryTrack:
    """A loaded encoder that reproduces the stacks of a store of `settings`."""

    def __init__(self, spec: EncoderSpec, encoder: StackEncoder, settings: StoreSettings):
        self.spec, self.encoder, self.settings = spec, encoder, settings
        self.decode = spec.decode_settings(settings)

    @classmethod
    def load(cls, spec: EncoderSpec, settings: StoreSettings, device: str = "auto") -> "QueryTrack":
        """Load a checked spec's weights in the store's precision (auto when it records none)."""
        return cls(spec, spec.load(device, settings.precision or "auto"), settings)

    @classmethod
    def open(cls, kind: str, folder: str | Path, check: IdentityCheck | None, settings: StoreSettings,
             device: str = "auto") -> "QueryTrack":
        """Read the folder, check it, then load it: `read_checked` and `load` in one."""
        return cls.load(read_checked(kind, folder, check), settings, device)

    @property
    def identity(self) -> EncoderIdentity:
        return self.encoder.identity

    @property
    def sample_rate(self) -> int:
        """The rate decoded audio must have for `stack_of_samples` (0 for image and video encoders)."""
        return self.identity.sample_rate

    @property
    def min_samples(self) -> int:
        """The fewest samples that give a stack at all (the encoder's receptive field)."""
        return self._audio_decode().min_samples

    def stack(self, path: str | Path) -> np.ndarray:
        """(L+1, H) or (tokens, H) float32: the file decoded by extraction's own reader, then pooled as stored."""
        decoded = self.spec.decoder(ClipSource(str(path), str(path)), self.decode)
        if decoded.reason:
            raise MullamaError(f"cannot use {path} as a query: {decoded.reason}")
        return self._pooled(decoded.windows)

    def stack_of_samples(self, samples: np.ndarray) -> np.ndarray:
        """The stack of audio already decoded to `sample_rate` (an upload), cut into extraction's windows."""
        decode = self._audio_decode()
        return self._pooled(split_windows(samples, decode.window_samples, decode.min_last_samples))

    def _audio_decode(self) -> DecodeSettings:
        if self.identity.modality != AUDIO:
            raise MullamaError(f"a {self.identity.kind} encoder takes files, not decoded audio")
        return self.decode

    def _pooled(self, windows: list[np.ndarray]) -> np.ndarray:
        """Each window encoded alone, then the clip mean the store keeps, rounded through the store's dtype."""
        stacks = np.concatenate([self.encoder.encode([window]) for window in windows])
        return stacks.astype(np.float32).mean(axis=0).astype(self.settings.dtype).astype(np.float32)
