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
<<<<<<< HEAD
=======
    geometry: ConvGeometry

    @classmethod
    def read(cls, folder: str | Path) -> "EncoderSpec":
        folder = Path(folder)
        if not folder.is_dir():
            raise MullamaError(f"MERT folder {folder} does not exist; create a random one with "
                               "`mullama models init-mert`")
        raw = read_config(folder)
        check_supported(raw, folder)
        preprocessor = folder / "preprocessor_config.json"
        if not preprocessor.is_file():
            raise MullamaError(f"{folder} has no preprocessor_config.json (the MERT feature extractor settings)")
        try:
            rate = int(raw.get("sample_rate") or json.loads(preprocessor.read_text())["sampling_rate"])
            layers, hidden = int(raw["num_hidden_layers"]), int(raw["hidden_size"])
            geometry = ConvGeometry.from_config(list(raw["conv_kernel"]), list(raw["conv_stride"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MullamaError(f"{folder}: config.json lacks a field MERT needs ({exc})") from None
        identity = EncoderIdentity(
            **identity_origin(folder, raw, folder.name),
            config_hash=config_hash(raw),
            weights_hash=hash_files(weight_files(folder)),
            sample_rate=rate,
            hidden_states=layers + 1,
            hidden_size=hidden,
            modality=AUDIO,
            kind=MERT,
        )
        return cls(folder, identity, geometry)

    suffixes = AUDIO_SUFFIXES
    decoder = staticmethod(decode_clip)

    def decode_settings(self, config: ExtractConfig) -> DecodeSettings:
        rate, field = self.identity.sample_rate, self.geometry.receptive_field
        return DecodeSettings(sample_rate=rate, window_samples=int(round(config.window_seconds * rate)),
                              min_last_samples=max(field, int(round(config.min_window_seconds * rate))),
                              min_samples=field)

    def store_settings(self, config: ExtractConfig, precision: str) -> StoreSettings:
        return StoreSettings(window_seconds=config.window_seconds, min_window_seconds=config.min_window_seconds,
                             dtype=config.dtype, precision=precision)

    def load(self, device: str = "auto", precision: str = "auto") -> "MertEncoder":
        return MertEncoder.load(self.folder, device, precision)


class MertEncoder:
    """Turns equal-length windows of audio into (L+1, H) time-mean stacks."""

    def __init__(self, model: HubertModel, feature_extractor: Wav2Vec2FeatureExtractor, identity: EncoderIdentity,
                 geometry: ConvGeometry, device: torch.device, precision: str):
        self.model = model
        self.feature_extractor = feature_extractor
        self.identity = identity
        self.geometry = geometry
        self.device = device
        self.precision = precision
>>>>>>> hub

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
