"""Which music decoder a folder holds, read before any weight loads: a MusicGen or MusicGen-Melody folder
(transformers, config.json) or an AudioLDM2 pipeline folder (diffusers, model_index.json). Every command that
takes `--musicgen` accepts either; the conditioning space they define tells them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mullama.errors import MullamaError
from mullama.model.audioldm2_decoder import AudioLDM2Decoder, is_audioldm2, read_audioldm2_space
from mullama.model.music_decoder import ConditioningSpace, MusicDecoder, read_kind, read_space


def decoder_kind(folder: str | Path) -> str:
    """musicgen, musicgen_melody or audioldm2; a clear error for anything else."""
    if not Path(folder).is_dir():
        raise MullamaError(f"music decoder folder {folder} " + ("is a file; give the model's folder"
                                                                if Path(folder).exists() else "does not exist"))
    if is_audioldm2(folder):
        return "audioldm2"
    if not (Path(folder) / "config.json").is_file():
        raise MullamaError(f"{folder} is neither a MusicGen folder (config.json) nor an AudioLDM2 folder "
                           "(model_index.json); create a random one with `mullama models init-musicgen` or "
                           "`init-audioldm2`")
    return read_kind(folder)[0]


def decoder_space(folder: str | Path) -> ConditioningSpace:
    return read_audioldm2_space(folder) if decoder_kind(folder) == "audioldm2" else read_space(folder)


def load_decoder(folder: str | Path, device: str = "auto", progress: bool = False) -> Any:
    """A MusicDecoder or an AudioLDM2Decoder: both take conditioning rows and give (B, samples) audio."""
    if decoder_kind(folder) == "audioldm2":
        return AudioLDM2Decoder.load(folder, device=device, progress=progress)
    return MusicDecoder.load(folder, device=device)


def sampling(decoder: Any, *, steps: int, top_k: int = 250, temperature: float = 1.0) -> dict[str, Any]:
    """The sampling keywords `decoder.generate` takes: AudioLDM2 denoises for `steps`, MusicGen samples codes."""
    if isinstance(decoder, AudioLDM2Decoder):
        return {"steps": steps}
    return {"top_k": top_k, "temperature": temperature}
