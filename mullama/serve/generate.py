"""`mullama generate` and `mullama edit` (docs/generation.md): a request in words (and, to edit, a recording) ->
conditioning rows from the generator -> audio from the frozen MusicGen (or AudioLDM2) -> a WAV or FLAC file.

Every folder is checked before any weights load: the generator's adapter and LLaMA, the decoder folder's text
side against the generator's targets, and for an edit the MERT folder against the adapter and a Melody model.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from mullama.durable import check_writable_folder, write_atomic
from mullama.errors import MullamaError
from mullama.serve.config import EditConfig, GenerateConfig, SoundOptions

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
    check_writable_folder(out.parent, f"--out {out}")


def decoder_folder(musicgen: str, manifest: Any) -> str:
    """--musicgen, or the folder the generator was trained for; its text side checked against the generator's."""
    from mullama.model.decoders import decoder_space

    folder = musicgen or manifest.trained_with.get("musicgen", "")
    if not folder:
        raise MullamaError("give --musicgen: the generator does not name the music decoder folder it was trained for")
    if not Path(folder).is_dir():
        raise MullamaError(f"music decoder folder {folder} does not exist" + (
            "" if musicgen else " (the generator was trained for it; give --musicgen where it is now)"))
    manifest.space.check(decoder_space(folder), f"music decoder folder {folder}")
    return folder


def _sound(config: SoundOptions, folder: str, stacks: Any, melody: Any, encoder: Any) -> SoundReport:
    from mullama.model.decoders import load_decoder, sampling
    from mullama.model.generator import MusicGenerator

    started = time.perf_counter()
    generator = MusicGenerator.load(config.generator, adapter=config.adapter, llama=config.llama, dtype=config.dtype,
                                    device=config.device, encoder=encoder)
    rows = generator.rows([config.request], None if stacks is None else stacks[None])
    del generator  # the LLaMA is done: free it before the decoder loads
    decoder = load_decoder(folder, device=config.device, progress=True)
    if config.seconds > decoder.max_seconds:
        raise MullamaError(f"--seconds {config.seconds}: this {decoder.kind} generates at most "
                           f"{decoder.max_seconds:g} s")
    melody_audio = None
    if melody is not None:
        from mullama.extract.audio import AudioError, load_audio

        try:
            melody_audio = [load_audio(melody, decoder.sampling_rate)]
        except AudioError as exc:
            raise MullamaError(f"cannot read {melody}: {exc}") from None
    audio = decoder.generate(rows, config.seconds, guidance=config.guidance,
                             seed=None if config.seed < 0 else config.seed, melody=melody_audio,
                             melody_rate=decoder.sampling_rate,
                             **sampling(decoder, steps=config.steps, top_k=config.top_k,
                                        temperature=config.temperature))[0]
    write_audio(config.out, audio, decoder.sampling_rate)
    return SoundReport(Path(config.out), len(audio) / decoder.sampling_rate, decoder.sampling_rate,
                       f"{Path(folder).name} ({decoder.kind})", time.perf_counter() - started)


def run_generate(config: GenerateConfig) -> SoundReport:
    from mullama.model.generator import GeneratorManifest

    check_out(config)
    folder = decoder_folder(config.musicgen, GeneratorManifest.read(config.generator))
    return _sound(config, folder, None, None, None)


def run_edit(config: EditConfig) -> SoundReport:
    from mullama.extract.encoder import EncoderSpec, MertEncoder
    from mullama.extract.single import clip_stack
    from mullama.model.checkpoint import read_manifest
    from mullama.model.decoders import decoder_kind
    from mullama.model.generator import GeneratorManifest, MusicGenerator
    from mullama.model.identity import check_encoder
    from mullama.store.schema import StoreSettings

    check_out(config)
    if not Path(config.input).is_file():
        raise MullamaError(f"INPUT {config.input} is not a file; give the recording to edit")
    manifest = GeneratorManifest.read(config.generator)
    folder = decoder_folder(config.musicgen, manifest)
    kind = decoder_kind(folder)
    if kind != "musicgen_melody":
        raise MullamaError(f"music decoder folder {folder} is {'plain MusicGen' if kind == 'musicgen' else kind}; "
                           "editing follows the recording's melody with a MusicGen-Melody folder: give one with "
                           "--musicgen")
    adapter = config.adapter or manifest.trained_with.get("adapter", "")
    spec = EncoderSpec.read(config.mert)
    check_encoder(read_manifest(adapter).encoder_for("audio"), spec.identity, strict=True)
    llama = config.llama or manifest.trained_with.get("llama", "")
    if Path(llama).is_dir():  # every folder checked before MERT's weights load (a missing one: the load says so)
        MusicGenerator.check_folders(manifest, config.generator, adapter, llama)
    settings = StoreSettings()
    stack = clip_stack(MertEncoder.load(config.mert, device=config.device), config.input, settings.window_seconds,
                       settings.min_window_seconds, settings.dtype)
    return _sound(config, folder, stack, config.input, spec.identity)
