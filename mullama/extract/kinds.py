"""The registered encoder kinds, by name and by command-line option.

Importing a kind's module registers it (`mullama.extract.encoder.register`); this module imports every kind
module, so a lookup here sees them all. A new kind: its module, and its import below.
"""

from __future__ import annotations

from pathlib import Path

from mullama.errors import MullamaError
from mullama.extract import mert, vision  # noqa: F401  (each registers its kinds on import)
from mullama.extract.encoder import KINDS, EncoderKind, EncoderSpec


def registered_kinds() -> list[EncoderKind]:
    """Every kind, in registration order (MERT first)."""
    return list(KINDS.values())


def encoder_kind(name: str) -> EncoderKind:
    if name not in KINDS:
        raise MullamaError(f"unknown encoder kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


def kind_of_option(option: str) -> EncoderKind:
    """The kind whose folder the command-line option --`option` takes."""
    for kind in KINDS.values():
        if kind.option == option:
            return kind
    raise MullamaError(f"--{option} names no encoder kind; known: {', '.join(f'--{k.option}' for k in KINDS.values())}")


def read_encoder(name: str, folder: str | Path) -> EncoderSpec:
    """What the folder of an encoder of kind `name` is, without loading its weights."""
    return encoder_kind(name).read(folder)
