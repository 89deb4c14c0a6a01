"""What the server loads once at start (model, store, encoder, index) and the lookups its routes make.

Every identity is checked before any weights load: the adapter's LLaMA, the store's and the MERT
folder's encoder against the adapter's, the index against the store.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mullama.errors import MullamaError
from mullama.extract.audio import AudioError, decode_upload, load_audio
from mullama.music.audio_file import audio_bytes
from mullama.music.compose import Sampling
from mullama.music.compose import compose as compose_music
from mullama.music.decoders import load_decoder
from mullama.music.generator import GeneratorManifest, MusicGenerator
from mullama.serve.config import ServeConfig
from mullama.serve.openai_types import ApiError

STORE_REFRESH_S = 5.0  # an unknown clip id re-reads the commits at most this often (object storage lists slowly)
UPLOADS_KEPT = 32  # uploaded tracks whose stacks are kept (100 KB each for MERT-330M)


def music_folders(config: ServeConfig) -> tuple[GeneratorManifest, str]:
    """(the generator's manifest, the music decoder's folder) for --generator, every identity checked."""
    manifest = GeneratorManifest.read(config.generator)
    MusicGenerator.check_folders(manifest, config.generator, config.adapter, config.llama)
    return manifest, manifest.decoder_folder(config.musicgen)


class Resources:
    def __init__(self, config: ServeConfig):
        from mullama.knn.clip_index import open_index
        from mullama.model import MusicLlama
        from mullama.model.checkpoint import read_manifest
        from mullama.model.identity import check_encoder
        from mullama.store.feature_store import FeatureStore
        from mullama.store.schema import StoreSettings

        self.config = config
        self.audio_root = Path(config.audio_root).resolve() if config.audio_root else None
        if self.audio_root is not None and not self.audio_root.is_dir():
            raise MullamaError(f"--audio-root {config.audio_root} is not a folder")
        manifest = read_manifest(config.adapter)
        self.store = FeatureStore.open(config.store) if config.store else None
        if self.store is not None:
            check_encoder(manifest.encoder, self.store.encoder, strict=True)
        self.warnings: list[str] = []
        self.index = open_index(config.index, config.store) if config.index else None
        if self.index is not None:
            check_encoder(manifest.encoder, self.index.encoder, strict=True)
            if self.store is not None:
                self.warnings += self.index.check_store(self.store)
        self.settings = self.store.effective_settings() if self.store is not None else StoreSettings()
        self.encoder = None
        if config.mert:
            from mullama.extract.encoder import EncoderSpec, MertEncoder

            check_encoder(manifest.encoder, EncoderSpec.read(config.mert).identity, strict=True)
            self.encoder = MertEncoder.load(config.mert, device=config.device,
                                            precision=self.settings.precision or "auto")
        identity = self.store.encoder if self.store is not None else (self.encoder.identity if self.encoder else None)
        music = music_folders(config) if config.generator else None  # checked before any weights load
        self.model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device,
                                     encoder=identity)
        self.generator = self.decoder = None
        if music is not None:
            self.generator = MusicGenerator.on(self.model, config.generator, music[0])
            self.decoder = load_decoder(music[1], device=config.device)
        # Music is made on its own thread, one request at a time (seconds to minutes each on a CPU).
        self.music_thread = ThreadPoolExecutor(1, thread_name_prefix="mullama-music")
        self.model_name = config.model_name or Path(config.adapter).resolve().name
        self._uploads: OrderedDict[str, np.ndarray] = OrderedDict()  # recent uploads' stacks, by content hash
        self._last_refresh = time.monotonic()
        # One thread decodes and encodes uploads, one at a time: they queue rather than share memory and cores.
        self.upload_thread = ThreadPoolExecutor(1, thread_name_prefix="mullama-upload")
        self._uploads_lock = threading.Lock()
        self._store_lock = threading.Lock()

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.model.config, "max_position_embeddings", 4096))

    # ------------------------------------------------------------------ tracks
    def stored_stack(self, clip_id: str, param: str = "clip_id") -> np.ndarray:
        if self.store is None:
            raise ApiError(400, "this server has no feature store (start it with --store) to take clip_id from",
                           param, "no_store")
        if not self.stored(clip_id):
            raise ApiError(404, f"clip {clip_id!r} is not a stored clip", param, "clip_not_found")
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

    def cached_upload(self, data: bytes) -> tuple[str, np.ndarray | None]:
        """(the upload's content hash, its stack when it was encoded recently): a conversation re-sends its audio
        with every turn, and is encoded once."""
        if self.encoder is None:
            raise ApiError(400, "this server takes no audio uploads (start it with --mert); name a stored clip "
                                "with clip_id", "input_audio", "no_encoder")
        digest = hashlib.sha256(data).hexdigest()
        with self._uploads_lock:
            if digest in self._uploads:
                self._uploads.move_to_end(digest)
                return digest, self._uploads[digest]
        return digest, None

    def uploaded_stack(self, data: bytes, digest: str, param: str) -> np.ndarray:
        """The clip stack of uploaded audio, computed exactly as extraction stores it (run on `upload_thread`)."""
        from mullama.extract.audio import AudioError, decode_upload
        from mullama.extract.single import samples_stack

        try:
            audio = decode_upload(data, param, self.encoder.sample_rate, self.encoder.geometry.receptive_field,
                                  self.config.max_audio_seconds)
        except AudioError as exc:
            raise ApiError(413 if exc.reason == "too_long" else 400, str(exc.detail), param,
                           f"audio_{exc.reason}") from None
        stack = samples_stack(self.encoder, audio, self.settings.window_seconds, self.settings.min_window_seconds,
                              self.settings.dtype)
        with self._uploads_lock:
            self._uploads[digest] = stack
            if len(self._uploads) > UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return stack

    # ------------------------------------------------------------------ music
    def compose(self, request: str, stack: np.ndarray | None, recording: bytes | Path | None, seconds: float,
                seed: int | None, suffix: str) -> bytes:
        """Encoded audio (WAV or FLAC bytes) of music for `request`; with a track, the LLaMA hears its stack and a
        MusicGen-Melody decoder follows its `recording`: uploaded bytes, or a stored clip's file under --audio-root
        (its first --max-audio-seconds). Run on `music_thread`."""
        follow = None if recording is None else (lambda rate: self._recording(recording, rate))
        try:
            audio = compose_music(self.generator, self.decoder, [request],
                                  Sampling(seconds, seed, steps=self.config.music_steps),
                                  None if stack is None else stack[None], follow)[0]
        except MullamaError as exc:  # e.g. more seconds than the decoder's positions allow
            raise ApiError(400, str(exc), "seconds", "invalid_request") from None
        return audio_bytes(audio, self.decoder.sampling_rate, suffix)

    def _recording(self, recording: bytes | Path, rate: int) -> np.ndarray:
        """The recording a decoder follows, at its `rate`: an upload, or a stored clip's file (cut to
        --max-audio-seconds)."""
        stored = isinstance(recording, Path)
        try:
            return (load_audio(recording, rate)[: int(self.config.max_audio_seconds * rate)] if stored
                    else decode_upload(recording, "input_audio", rate, 1, self.config.max_audio_seconds))
        except AudioError as exc:  # a stored file's error names the clip, never the server's paths
            detail = f"the stored clip's audio file cannot be followed ({exc.reason})" if stored else exc.detail
            raise ApiError(400, detail, "clip_id" if stored else "input_audio", f"audio_{exc.reason}") from None

    # ------------------------------------------------------------------ catalog
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

    def clip_info(self, clip_id: str) -> dict[str, Any]:
        if not self.stored(clip_id):
            raise ApiError(404, f"clip {clip_id!r} is not a stored clip", "clip_id", "clip_not_found")
        record = self.store.record(clip_id)
        return {"id": clip_id, "object": "clip", "source_name": Path(record.source).name,
                "duration": record.duration, "windows": record.windows, "content_hash": record.content_hash,
                "partition": record.partition, "playable": self.audio_path(clip_id) is not None}

    def similar(self, k: int, clip_id: str | None = None, stack: np.ndarray | None = None) -> list[dict[str, Any]]:
        if self.index is None:
            raise ApiError(400, "this server has no kNN index (start it with --index)", None, "no_index")
        try:
            if clip_id is not None:
                found = self.index.search(clip_ids=[clip_id], k=k)[0]
            else:
                identity = self.encoder.identity if self.encoder is not None else None
                found = self.index.search(stacks=stack[None], encoder=identity, k=k)[0]
        except MullamaError as exc:
            if clip_id is not None:  # (the library's message names the index's path: not for clients)
                raise ApiError(404, f"clip {clip_id!r} is not in the index", "clip_id", "clip_not_found") from None
            raise ApiError(400, str(exc), "input_audio") from None
        return [{"clip_id": n.clip_id, "score": n.score, "duration": n.duration,
                 "playable": self.audio_path(n.clip_id) is not None} for n in found]
