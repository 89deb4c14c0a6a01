"""`mullama generate` and `mullama edit` (docs/generation.md): a request in words (and, to edit, a recording) ->
music/compose.py's path (the generator's rows, the frozen MusicGen or AudioLDM2) -> a WAV or FLAC file.

Every folder is checked before any weights load: the generator's adapter and LLaMA, the decoder folder's text
side against the generator's targets, and for an edit the MERT folder against the adapter and a decoder kind that
can follow the recording.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mullama.errors import MullamaError
from mullama.extract.audio import AudioError, load_audio
from mullama.extract.encoder import EncoderSpec, MertEncoder
from mullama.extract.single import clip_stack
from mullama.model.checkpoint import read_manifest
from mullama.model.identity import check_encoder
from mullama.music.audio_file import write_audio
from mullama.music.compose import Recording, Sampling, compose_in_turn
from mullama.music.decoder import MusicDecoder
from mullama.music.decoders import decoder_kind, kind_named, load_decoder
from mullama.music.generator import GeneratorManifest, MusicGenerator
from mullama.serve.config import EditConfig, GenerateConfig, SoundOptions
from mullama.store.schema import StoreSettings


@dataclass
class SoundReport:
    out: Path
    seconds: float
    rate: int
    decoder: str
    compute_seconds: float
    exit_code: int = 0

    def lines(self) -> list[str]:
        return [f"wrote {self.out}: {self.seconds:.1f} s at {self.rate} Hz from {self.decoder} in "
                f"{self.compute_seconds:.1f} s"]


def check_out(config: SoundOptions) -> None:
    out = Path(config.out)
    if out.is_dir():
        raise MullamaError(f"--out {out} is a folder; give a .wav or .flac file name")
    if out.exists() and not config.overwrite:
        raise MullamaError(f"--out {out} exists; add --overwrite to replace it, or choose another name")
    if not out.parent.is_dir() and out.parent != Path(""):
        raise MullamaError(f"--out {out}: folder {out.parent} does not exist")


def read_recording(path: str) -> Recording:
    """The recording an edit follows, read at the decoder's rate when it can follow one."""
    def read(rate: int) -> np.ndarray:
        try:
            return load_audio(path, rate)
        except AudioError as exc:
            raise MullamaError(f"cannot read {path}: {exc}") from None
    return read


def _sound(config: SoundOptions, folder: str, stack: np.ndarray | None, recording: Recording | None,
           encoder: Any) -> SoundReport:
    started = time.perf_counter()

    def generator() -> MusicGenerator:
        return MusicGenerator.load(config.generator, adapter=config.adapter, llama=config.llama, dtype=config.dtype,
                                   device=config.device, encoder=encoder)

    def decoder() -> MusicDecoder:
        loaded = load_decoder(folder, device=config.device, progress=True)
        if config.seconds > loaded.max_seconds:
            raise MullamaError(f"--seconds {config.seconds}: this {loaded.kind} generates at most "
                               f"{loaded.max_seconds:g} s")
        return loaded

    sampling = Sampling(config.seconds, None if config.seed < 0 else config.seed, config.guidance, config.steps,
                        config.top_k, config.temperature)
    audio, made_by = compose_in_turn(generator, decoder, [config.request], sampling,
                                     None if stack is None else stack[None], recording)
    rate = made_by.sampling_rate
    write_audio(config.out, audio[0], rate)
    return SoundReport(Path(config.out), len(audio[0]) / rate, rate, f"{Path(folder).name} ({made_by.kind})",
                       time.perf_counter() - started)


def run_generate(config: GenerateConfig) -> SoundReport:
    check_out(config)
    folder = GeneratorManifest.read(config.generator).decoder_folder(config.musicgen)
    return _sound(config, folder, None, None, None)


def run_edit(config: EditConfig) -> SoundReport:
    check_out(config)
    if not Path(config.input).is_file():
        raise MullamaError(f"INPUT {config.input} is not a file; give the recording to edit")
    manifest = GeneratorManifest.read(config.generator)
    folder = manifest.decoder_folder(config.musicgen)
    kind = kind_named(decoder_kind(folder))
    if not kind.follows_recording:
        raise MullamaError(f"music decoder folder {folder} is {kind.described}; editing follows the recording's "
                           "melody with a MusicGen-Melody folder: give one with --musicgen")
    adapter = config.adapter or manifest.trained_with.get("adapter", "")
    spec = EncoderSpec.read(config.mert)
    check_encoder(read_manifest(adapter).encoder_for("audio"), spec.identity, strict=True)
    llama = config.llama or manifest.trained_with.get("llama", "")
    if Path(llama).is_dir():  # every folder checked before MERT's weights load (a missing one: the load says so)
        MusicGenerator.check_folders(manifest, config.generator, adapter, llama)
    settings = StoreSettings()
    stack = clip_stack(MertEncoder.load(config.mert, device=config.device), config.input, settings.window_seconds,
                       settings.min_window_seconds, settings.dtype)
    return _sound(config, folder, stack, read_recording(config.input), spec.identity)
