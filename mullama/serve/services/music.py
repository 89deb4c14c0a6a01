"""Music for a chat request (`modalities: ["audio"]`, --generator): the generator's rows, the frozen decoder, and
the one thread that makes music, one request at a time (seconds to minutes each on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mullama.errors import MullamaError
from mullama.extract.audio import AudioError, decode_upload, load_audio
from mullama.model.music_llama import MusicLlama
from mullama.music.audio_file import audio_bytes
from mullama.music.compose import Sampling, compose
from mullama.music.decoders import load_decoder
from mullama.music.generator import GeneratorManifest, MusicGenerator
from mullama.serve.config import ServeConfig
from mullama.serve.services.errors import Invalid
from mullama.serve.services.worker import OneWorker

MAX_MUSIC_WAITING = 4  # music requests queued for the one music thread (each takes seconds to minutes); more refused


def music_folders(config: ServeConfig) -> tuple[GeneratorManifest, str]:
    """(the generator's manifest, the music decoder's folder) for --generator, every identity checked."""
    manifest = GeneratorManifest.read(config.generator)
    MusicGenerator.check_folders(manifest, config.generator, config.adapter, config.llama)
    return manifest, manifest.decoder_folder(config.musicgen)


def load_music(config: ServeConfig, model: MusicLlama, folders: tuple[Any, str]) -> MusicService:
    """The generator on the served model's LLaMA, and the decoder, from `music_folders`' checked folders."""
    manifest, decoder = folders
    return MusicService(MusicGenerator.on(model, config.generator, manifest),
                        load_decoder(decoder, device=config.device), config)


class MusicService:
    def __init__(self, generator: MusicGenerator, decoder: Any, config: ServeConfig):
        self.generator, self.decoder, self.config = generator, decoder, config
        self.worker = OneWorker("mullama-music", MAX_MUSIC_WAITING,
                                f"{MAX_MUSIC_WAITING} music requests are already waiting; retry shortly")

    async def make(self, request: str, stack: np.ndarray | None, recording: bytes | Path | None, seconds: float,
                   seed: int | None, suffix: str) -> bytes:
        """`compose` on the music thread, or Busy when as many requests already wait for it as it takes."""
        return await self.worker.run(self.compose, request, stack, recording, seconds, seed, suffix)

    def compose(self, request: str, stack: np.ndarray | None, recording: bytes | Path | None, seconds: float,
                seed: int | None, suffix: str) -> bytes:
        """Encoded audio (WAV or FLAC bytes) of music for `request`; with a track, the LLaMA hears its stack and a
        MusicGen-Melody decoder follows its `recording`: uploaded bytes, or a stored clip's file under --audio-root
        (its first --max-audio-seconds). Run on the music thread."""
        follow = None if recording is None else (lambda rate: self._recording(recording, rate))
        try:
            audio = compose(self.generator, self.decoder, [request],
                            Sampling(seconds, seed, steps=self.config.music_steps),
                            None if stack is None else stack[None], follow)[0]
        except MullamaError as exc:  # e.g. more seconds than the decoder's positions allow
            raise Invalid(str(exc), "seconds", "invalid_request") from None
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
            raise Invalid(detail, "clip_id" if stored else "input_audio", f"audio_{exc.reason}") from None
