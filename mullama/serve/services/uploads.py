"""Audio a client uploads: its bytes from base64, and its stack computed exactly as extraction stores it, on one
thread, one upload at a time, kept by content hash for the conversation's next turn."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict

import numpy as np
from starlette.concurrency import run_in_threadpool

from mullama.extract.audio import AudioError, decode_upload
from mullama.extract.encoder import EncoderSpec, MertEncoder
from mullama.extract.single import samples_stack
from mullama.model.checkpoint import AdapterManifest
from mullama.model.identity import check_encoder
from mullama.serve.config import ServeConfig
from mullama.serve.openai_types import InputAudio
from mullama.serve.services.errors import Invalid, TooLarge, Unsupported
from mullama.serve.services.worker import OneWorker
from mullama.store.schema import StoreSettings

UPLOADS_KEPT = 32  # uploaded tracks whose stacks are kept (100 KB each for MERT-330M)
MAX_UPLOADS_WAITING = 8  # uploads queued for the one encoding thread; more are refused


def load_upload_encoder(config: ServeConfig, manifest: AdapterManifest, settings: StoreSettings) -> MertEncoder | None:
    """--mert, checked against the adapter's encoder before its weights load (None: no uploads)."""
    if not config.mert:
        return None
    check_encoder(manifest.encoder, EncoderSpec.read(config.mert).identity, strict=True)
    return MertEncoder.load(config.mert, device=config.device, precision=settings.precision or "auto")


def upload_bytes(audio: InputAudio, param: str) -> bytes:
    try:
        data = base64.b64decode(audio.data, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{param}.data is not valid base64", param, "invalid_base64") from None
    if not data:
        raise Invalid(f"{param}.data is empty", param, "empty_audio")
    return data


class Uploads:
    """The upload encoder (None: the server takes no uploads), its one thread and its cache of recent stacks."""

    def __init__(self, encoder: MertEncoder | None, settings: StoreSettings, config: ServeConfig):
        self.encoder, self.settings, self.config = encoder, settings, config
        self._uploads: OrderedDict[str, np.ndarray] = OrderedDict()  # recent uploads' stacks, by content hash
        self._uploads_lock = threading.Lock()
        # One thread decodes and encodes uploads, one at a time: they queue rather than share memory and cores.
        self.worker = OneWorker("mullama-upload", MAX_UPLOADS_WAITING, f"{MAX_UPLOADS_WAITING} uploads are already "
                                "waiting to be encoded; retry shortly", "input_audio")

    async def read(self, audio: InputAudio) -> bytes:
        return await run_in_threadpool(upload_bytes, audio, "input_audio")

    async def stack(self, data: bytes) -> np.ndarray:
        """The stack of an uploaded track: from the cache when this conversation sent it before, else decoded and
        encoded on the one upload thread (a bounded line: memory and CPU stay bounded)."""
        digest, stack = await run_in_threadpool(self.cached_upload, data)
        if stack is not None:
            return stack
        return await self.worker.run(self.uploaded_stack, data, digest, "input_audio")

    def cached_upload(self, data: bytes) -> tuple[str, np.ndarray | None]:
        """(the upload's content hash, its stack when it was encoded recently): a conversation re-sends its audio
        with every turn, and is encoded once."""
        if self.encoder is None:
            raise Unsupported("this server takes no audio uploads (start it with --mert); name a stored clip "
                              "with clip_id", "input_audio", "no_encoder")
        digest = hashlib.sha256(data).hexdigest()
        with self._uploads_lock:
            if digest in self._uploads:
                self._uploads.move_to_end(digest)
                return digest, self._uploads[digest]
        return digest, None

    def uploaded_stack(self, data: bytes, digest: str, param: str) -> np.ndarray:
        """The clip stack of uploaded audio, computed exactly as extraction stores it (run on the upload thread)."""
        try:
            audio = decode_upload(data, param, self.encoder.sample_rate, self.encoder.geometry.receptive_field,
                                  self.config.max_audio_seconds)
        except AudioError as exc:
            raise (TooLarge if exc.reason == "too_long" else Invalid)(str(exc.detail), param,
                                                                     f"audio_{exc.reason}") from None
        stack = samples_stack(self.encoder, audio, self.settings.window_seconds, self.settings.min_window_seconds,
                              self.settings.dtype)
        with self._uploads_lock:
            self._uploads[digest] = stack
            if len(self._uploads) > UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return stack
