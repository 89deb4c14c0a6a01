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


class ClipIdText:
    """Every clip id, lowercased, in one string: the page's search is one C-speed str.find per match instead of
    a Python loop over a million ids (benchmarks/scale.py: 100 ms targets at 1M clips)."""

    SEPARATOR = "\0"

    def __init__(self, clip_ids: list[str], commits: int):
        self.ids, self.commits = clip_ids, commits
        lowered = [clip.lower() for clip in clip_ids]
        self.text = self.SEPARATOR.join(lowered)
        self.starts = np.zeros(len(lowered), dtype=np.int64)  # where each id begins in the text
        if lowered:
            np.cumsum([len(clip) + 1 for clip in lowered[:-1]], out=self.starts[1:])

    def containing(self, query: str, limit: int) -> list[str]:
        if not self.ids or self.SEPARATOR in query:
            return []
        found: list[str] = []
        position = self.text.find(query)
        while position >= 0 and len(found) < limit:
            number = int(np.searchsorted(self.starts, position, side="right")) - 1
            found.append(self.ids[number])
            if number + 1 == len(self.ids):
                break
            position = self.text.find(query, int(self.starts[number + 1]))
        return found


class Catalog:
    """The feature store (None: the server takes uploads only) and --audio-root; one lock serialises reads and
    refreshes of the store, which is not thread-safe."""

    def __init__(self, store: FeatureStore | None, audio_root: Path | None):
        self.store, self.audio_root = store, audio_root
        self._last_refresh = time.monotonic()
        self._store_lock = threading.Lock()
        self._ids: ClipIdText | None = None  # the page's search text, rebuilt when the store's catalog changes

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
        """The first `limit` stored clips (commit order) whose id contains `query`, ignoring case."""
        if self.store is None:
            return []
        with self._store_lock:
            if self._ids is None or self._ids.commits != self.store.commit_count:
                self._ids = ClipIdText(self.store.clip_ids(), self.store.commit_count)
            ids = self._ids
        return ids.containing(query.lower(), limit)

    def audio_path(self, clip_id: str) -> Path | None:
        """The stored clip's source file when it lies under --audio-root (paths in the store never escape it, nor
        do links). Extraction records a source as it was given, often relative to the folder it ran in, so the
        recorded path is tried as it is (absolute, or from the current folder), under the root, then by its tail
        under the root (`demo-run/corpus/audio/x.wav` as `audio/x.wav`, then `x.wav`)."""
        if self.audio_root is None or not self.stored(clip_id):
            return None
        source = Path(self.store.record(clip_id).source)
        tails = [Path(*source.parts[start:]) for start in range(1, len(source.parts))]
        for candidate in (source, self.audio_root / source, *(self.audio_root / tail for tail in tails)):
            path = candidate.resolve()
            if path.is_relative_to(self.audio_root) and path.is_file():
                return path
        return None

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
