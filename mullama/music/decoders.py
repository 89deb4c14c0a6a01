"""The registry of music decoder families: which kind a folder holds, its conditioning space and the decoder,
all told before any weight loads. A MusicGen or MusicGen-Melody folder (transformers, config.json) or an AudioLDM2
pipeline folder (diffusers, model_index.json): every command that takes `--musicgen` accepts any registered kind,
and the conditioning space they define tells them apart.
"""

from __future__ import annotations

from pathlib import Path
from mullama.errors import MullamaError
from mullama.music import audioldm2, musicgen
from mullama.music.decoder import DecoderFamily, DecoderKind, MusicDecoder
from mullama.music.space import ConditioningSpace

# One registration per family, in detection order: a diffusers folder is told by its model_index.json first.
FAMILIES: tuple[DecoderFamily, ...] = (audioldm2.FAMILY, musicgen.FAMILY)
KINDS: dict[str, tuple[DecoderKind, DecoderFamily]] = {kind.name: (kind, family) for family in FAMILIES
                                                       for kind in family.kinds}


def decoder_kind(folder: str | Path) -> str:
    """musicgen, musicgen_melody or audioldm2; a clear error for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MullamaError(f"music decoder folder {folder} " + ("is a file; give the model's folder"
                                                                if folder.exists() else "does not exist"))
    for family in FAMILIES:
        kind = family.detect(folder)
        if kind is not None:
            return kind
    raise MullamaError(f"{folder} is neither a MusicGen folder (config.json) nor an AudioLDM2 folder "
                       "(model_index.json); create a random one with `mullama models init-musicgen` or "
                       "`init-audioldm2`")


def kind_named(name: str) -> DecoderKind:
    return KINDS[name][0]


def follows_recording(decoder: MusicDecoder) -> bool:
    """Whether the decoder can follow an input recording's melody (what editing needs)."""
    return kind_named(decoder.kind).follows_recording


def decoder_space(folder: str | Path) -> ConditioningSpace:
    return KINDS[decoder_kind(folder)][1].read_space(Path(folder))


def load_decoder(folder: str | Path, device: str = "auto", progress: bool = False) -> MusicDecoder:
    return KINDS[decoder_kind(folder)][1].load(Path(folder), device, progress)

