"""The stacks a stored clip is answered from, by protocol (docs/evaluation.md, "Long tracks"):

  paper  windows 0, 2, 4... of the clip (the store's 60 s windows), one answer each, joined: the published
         evaluation's way with long tracks
  clip   the whole-clip stack (the mean of all windows), one answer
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from mullama.store.config import PROTOCOLS
from mullama.store.feature_store import FeatureStore

CLIP_CACHE = 64  # clips whose windows stay in memory: callers go through clips in order, so a few suffice


class ClipStacks:
    """Reads a clip's stacks under a protocol, as float32, with a small cache of recent clips' windows."""

    def __init__(self, store: FeatureStore, protocol: str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}")
        self.store = store
        self.protocol = protocol
        self._windows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._silence: np.ndarray | None = None

    def _clip_windows(self, clip: str) -> np.ndarray:
        if clip not in self._windows:
            self._windows[clip] = self.store.windows(clip).astype(np.float32)
            if len(self._windows) > CLIP_CACHE:
                self._windows.popitem(last=False)
        return self._windows[clip]

    def window_numbers(self, clip: str) -> list[int]:
        """The windows answered under the protocol ([] for the whole-clip stack)."""
        if self.protocol == "clip":
            return []
        return list(range(0, self.store.record(clip).windows, 2))

    def of(self, clip: str) -> tuple[list[np.ndarray], list[int]]:
        """(stacks to answer from, their window numbers; [] for the whole-clip stack)."""
        if self.protocol == "clip":
            return [self.store.get([clip])[0].astype(np.float32)], []
        windows = self._clip_windows(clip)
        chosen = list(range(0, len(windows), 2))
        return [windows[i] for i in chosen], chosen

    def silence(self) -> np.ndarray:
        if self._silence is None:
            self._silence = self.store.silence_stack().astype(np.float32)
        return self._silence
