"""What every encoder kind provides, and where each kind registers itself.

An encoder kind (MERT for audio, ViT for images, ViViT for videos) is one module that defines a spec class
satisfying `EncoderSpec` and calls `register` once, naming its modality and the command-line option that
takes its folder; `mullama.extract.kinds` imports the kind modules and answers lookups. Planning, extraction
and query encoding reach a kind only through these protocols, so a new kind touches nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from mullama.encoder_identity import EncoderIdentity
from mullama.extract.mapper import Encoder
from mullama.extract.reader import Decoder
from mullama.store import StoreSettings


class StackEncoder(Encoder, Protocol):
    """A loaded encoder replica, with what the store records of it."""

    identity: EncoderIdentity
    precision: str
    sample_rate: int


class EncoderSpec(Protocol):
    """What an encoder folder is, read from its files without loading its weights (cheap, for planners and for
    checking a folder against an adapter or index before anything loads)."""

    folder: Path
    identity: EncoderIdentity

    @property
    def suffixes(self) -> frozenset[str]:
        """The file suffixes a folder input is scanned for."""

    @property
    def decoder(self) -> Decoder:
        """The reader's module-level function from a source and `decode_settings(...)` to encoder inputs."""

    def decode_settings(self, settings: StoreSettings) -> Any:
        """What the reader's workers need to turn one file into encoder inputs for a store of `settings`."""

    def store_settings(self, requested: StoreSettings) -> StoreSettings:
        """The settings a store of this kind records for the requested ones (e.g. no windows for images)."""

    def check_settings(self, settings: StoreSettings) -> None:
        """Refuse settings this encoder cannot honour (MullamaError naming the option), before any work."""

    def load(self, device: str = "auto", precision: str = "auto") -> StackEncoder:
        """The encoder's weights, in eval mode; `precision` auto = bf16 on CUDA, fp32 on CPU."""


@dataclass(frozen=True)
class EncoderKind:
    """One registered kind: the name its identities record, its modality, and the option naming its folder."""

    name: str  # mert, vit, vivit (EncoderIdentity.kind)
    modality: str  # audio, image, video (EncoderIdentity.modality)
    option: str  # the command-line option taking its folder, without dashes (--mert)
    read: Callable[[str | Path], EncoderSpec]  # a folder -> its spec, raising MullamaError for a wrong folder


KINDS: dict[str, EncoderKind] = {}  # by name, in registration order


def register(kind: EncoderKind) -> EncoderKind:
    """Add a kind; a second kind of the same name or option is a programming error, refused."""
    for known in KINDS.values():
        if kind.name == known.name or kind.option == known.option:
            raise ValueError(f"encoder kind {kind.name!r} (--{kind.option}) clashes with the registered kind "
                             f"{known.name!r} (--{known.option})")
    KINDS[kind.name] = kind
    return kind
