"""The frozen MERT encoder, loaded as transformers' HubertModel (no remote code), reduced to layer stacks.

MERT v1 checkpoints on the hub declare `model_type: mert_model` and ship remote code, but with the
CQT branch and deepnorm off every weight matches HubertModel (docs/audio-encoder.md), so we load them directly.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from mullama.data.manifest import AUDIO_SUFFIXES
from mullama.encoder_identity import AUDIO, MERT, EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.encoder import EncoderKind, register
from mullama.extract.encoder_files import config_hash, hash_files, read_config, weight_files
from mullama.extract.reader import DecodeSettings, decode_clip
from mullama.hub_ids import identity_origin
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype
from mullama.store import StoreSettings


def check_supported(config: dict[str, Any], folder: Path) -> None:
    """Refuse checkpoints HubertModel would compute differently from MERT's own code."""
    model_type = config.get("model_type")
    if model_type not in ("mert_model", "hubert"):
        raise MullamaError(f"{folder}: model_type {model_type!r} is not a MERT or HuBERT encoder")
    for flag in ("feature_extractor_cqt", "deepnorm", "conv_pos_batch_norm"):
        if config.get(flag):
            raise MullamaError(
                f"{folder}: {flag} is enabled in config.json; only MERT v1 checkpoints with the CQT branch, "
                "deepnorm and positional batch norm off are supported (they load as HubertModel)")


@dataclass(frozen=True)
class ConvGeometry:
    """Receptive field and stride of the conv front end, in samples."""

    receptive_field: int
    stride: int

    @classmethod
    def from_config(cls, kernels: list[int], strides: list[int]) -> "ConvGeometry":
        field, jump = 1, 1
        for kernel, stride in zip(kernels, strides):
            field += (kernel - 1) * jump
            jump *= stride
        return cls(field, jump)

    def frames(self, samples: int) -> int:
        return 0 if samples < self.receptive_field else (samples - self.receptive_field) // self.stride + 1


@dataclass(frozen=True)
class MertSpec:
    """What a MERT folder is, read from its files without loading the model (an `EncoderSpec`)."""

    folder: Path
    identity: EncoderIdentity
    geometry: ConvGeometry

    @classmethod
    def read(cls, folder: str | Path) -> "MertSpec":
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

    def decode_settings(self, settings: StoreSettings) -> DecodeSettings:
        rate, field = self.identity.sample_rate, self.geometry.receptive_field
        return DecodeSettings(sample_rate=rate, window_samples=int(round(settings.window_seconds * rate)),
                              min_last_samples=max(field, int(round(settings.min_window_seconds * rate))),
                              min_samples=field)

    def store_settings(self, requested: StoreSettings) -> StoreSettings:
        return requested

    def check_settings(self, settings: StoreSettings) -> None:
        """A window shorter than the conv front end's receptive field gives no frame at all."""
        field = self.geometry.receptive_field
        if self.decode_settings(settings).window_samples < field:
            raise MullamaError(f"--window-seconds {settings.window_seconds}: shorter than the encoder's receptive "
                               f"field ({field} samples, {field / self.identity.sample_rate:.4f} s); no window could "
                               "be encoded")

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

    @property
    def sample_rate(self) -> int:
        return self.identity.sample_rate

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", precision: str = "auto") -> "MertEncoder":
        """Load a MERT (hub layout or HubertModel layout) folder; `precision` auto = bf16 on CUDA, fp32 on CPU."""
        spec = MertSpec.read(folder)
        torch_device = resolve_device(device)
        autocast = resolve_dtype(precision, torch_device, allowed=("fp32", "bf16"), option="precision")
        precision = "bf16" if autocast == torch.bfloat16 else "fp32"
        try:
            with quiet_transformers():  # the mert_model -> hubert type warning is expected
                config = HubertConfig.from_pretrained(spec.folder)
                config.tie_last_hidden_states = True  # hidden_states[-1] after the final LayerNorm, as in 4.x
                config.conv_pos_batch_norm = False
                model = HubertModel.from_pretrained(spec.folder, config=config, dtype=torch.float32)
                feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(spec.folder)
        except OSError as exc:
            raise MullamaError(f"cannot load MERT from {spec.folder}: {exc}") from None
        if int(feature_extractor.sampling_rate) != spec.identity.sample_rate:
            raise MullamaError(f"{spec.folder}: config sample_rate {spec.identity.sample_rate} differs from the "
                               f"feature extractor's {feature_extractor.sampling_rate}")
        model.eval().requires_grad_(False).to(torch_device)
        return cls(model, feature_extractor, spec.identity, spec.geometry, torch_device, precision)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, windows: list[np.ndarray]) -> np.ndarray:
        """(B, L+1, H) float32 stacks for B windows of EQUAL length (never padded: docs/audio-encoder.md)."""
        lengths = {w.shape[0] for w in windows}
        if len(lengths) != 1:
            raise ValueError(f"encode() needs windows of one length, got lengths {sorted(lengths)}")
        inputs = self.feature_extractor(windows, sampling_rate=self.sample_rate, return_tensors="np")
        values = torch.from_numpy(np.ascontiguousarray(inputs["input_values"], dtype=np.float32)).to(self.device)
        with torch.inference_mode(), self._autocast():
            hidden = self.model(values, output_hidden_states=True).hidden_states
            stacks = torch.stack([h.mean(dim=1, dtype=torch.float32) for h in hidden], dim=1)
        return stacks.cpu().numpy()


register(EncoderKind(name=MERT, modality=AUDIO, option="mert", read=MertSpec.read))
