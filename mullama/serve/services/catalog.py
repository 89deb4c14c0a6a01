"""The stored clips a server offers: their stacks, catalog fields and audio files, seeing clips committed since
it started."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mullama.errors import MullamaError
from mullama.serve.config import ServeConfig
from mullama.serve.services.errors import NotFound, Unsupported
from mullama.store.feature_store import FeatureStore

STORE_REFRESH_S = 5.0  # an unknown clip id re-reads the commits at most this often (object storage lists slowly)


def audio_root(config: ServeConfig) -> Path | None:
    """--audio-root, resolved: the one folder whose files the server plays."""
    root = Path(config.audio_root).resolve() if config.audio_root else None
    if root is not None and not root.is_dir():
        raise MullamaError(f"--audio-root {config.audio_root} is not a folder")
    return root


class Catalog:
    """The feature store (None: the server takes uploads only) and --audio-root; one lock serialises reads and
    refreshes of the store, which is not thread-safe."""

    def __init__(self, store: FeatureStore | None, audio_root: Path | None):
        self.store, self.audio_root = store, audio_root
        self._last_refresh = time.monotonic()
        self._store_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.store or ())

    def stored_stack(self, clip_id: str, param: str = "clip_id") -> np.ndarray:
        if self.store is None:
            raise Unsupported("this server has no feature store (start it with --store) to take clip_id from", param,
                              "no_store")
        if not self.stored(clip_id):
            raise NotFound(f"clip {clip_id!r} is not a stored clip", param, "clip_not_found")
        with self._store_lock:
            return self.store.get([clip_id])[0].astype(np.float32)

    def stored(self, clip_id: str) -> bool:
        """Whether the store holds the clip, looking again (at most every few seconds) for partitions committed
        since the server started, so that a running extraction's new clips become available."""
        if self.store is None:
            return False
        if clip_id not in self.store and time.monotonic() - self._last_refresh > STORE_REFRESH_S:
            with self._store_lock:
                self.store.refresh()
                self._last_refresh = time.monotonic()
        return clip_id in self.store

    def clip_ids(self, query: str, limit: int) -> list[str]:
        if self.store is None:
            return []
        query = query.lower()
        return [clip for clip in self.store.clip_ids() if query in clip.lower()][:limit]

    def audio_path(self, clip_id: str) -> Path | None:
        """The stored clip's source file when it lies under --audio-root (paths in the store never escape it)."""
        if self.audio_root is None or not self.stored(clip_id):
            return None
        source = Path(self.store.record(clip_id).source)
        path = (source if source.is_absolute() else self.audio_root / source).resolve()
        return path if path.is_relative_to(self.audio_root) and path.is_file() else None

    def playable_path(self, clip_id: str) -> Path:
        path = self.audio_path(clip_id)
        if path is None:
            raise NotFound(f"no playable audio for clip {clip_id!r} (the server plays files under --audio-root only)",
                           "clip_id", "audio_not_found")
        return path

    def clip_info(self, clip_id: str) -> dict[str, Any]:
        if not self.stored(clip_id):
            raise NotFound(f"clip {clip_id!r} is not a stored clip", "clip_id", "clip_not_found")
        record = self.store.record(clip_id)
        return {"id": clip_id, "object": "clip", "source_name": Path(record.source).name,
                "duration": record.duration, "windows": record.windows, "content_hash": record.content_hash,
                "partition": record.partition, "playable": self.audio_path(clip_id) is not None}

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Catalog fields of the stored clips whose id contains `query` (the page's search)."""
        return [self.clip_info(clip) for clip in self.clip_ids(query, limit)]
