"""The adapter folder: only the trained tensors (safetensors) and a JSON naming what they belong to.

    adapter.safetensors   music adapter (+ stage-2 norms, biases, LoRA), under stable names
    adapter.json          format version, adapter settings, LLM and encoder identities, prompt format, source

Saved names do not depend on PEFT's wrapper layout ("base_layer", adapter names), so the importer can write
the folder without building a model and later PEFT versions can read it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mullama.durable import publish, temporary_name, write_atomic
from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.model.identity import LlmIdentity
from mullama.model.llm import MusicLlamaForCausalLM
from mullama.model.prompts import check_format
from mullama.model.settings import AdapterConfig
from mullama.model.stage2 import stage1_parameters, stage2_parameters

WEIGHTS_FILE = "adapter.safetensors"
MANIFEST_FILE = "adapter.json"
FORMAT = "mullama-adapter"
FORMAT_VERSION = 1


@dataclass
class AdapterManifest:
    config: AdapterConfig
    llm: LlmIdentity
    encoder: EncoderIdentity | None
    prompt_format: str
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    encoders: dict[str, EncoderIdentity] = field(default_factory=dict)  # by modality, for a multi-modal adapter

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": self.format_version, "adapter": self.config.to_dict(),
                "llm": self.llm.to_dict(), "encoder": self.encoder.to_dict() if self.encoder else None,
                "prompt_format": self.prompt_format, "source": self.source}
        if self.encoders:
            data["encoders"] = {modality: identity.to_dict() for modality, identity in self.encoders.items()}
        return data

    def encoder_for(self, modality: str) -> EncoderIdentity | None:
        """The encoder whose stacks the adapter's `modality` branch was trained on (None: not recorded)."""
        if self.encoders:
            if modality not in self.encoders:
                raise MullamaError(f"the adapter has no {modality} branch; it takes {', '.join(self.encoders)}")
            return self.encoders[modality]
        if modality != "audio":
            raise MullamaError(f"the adapter takes audio only, not {modality}; train one on a {modality} store")
        return self.encoder

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "AdapterManifest":
        if data.get("format") != FORMAT:
            raise MullamaError(f"{where} is not a mullama adapter manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise MullamaError(f"{where} has adapter format version {data.get('format_version')}; "
                               f"this mullama reads version {FORMAT_VERSION}")
        try:
            encoder = EncoderIdentity.from_dict(data["encoder"]) if data.get("encoder") else None
            encoders = {m: EncoderIdentity.from_dict(e) for m, e in (data.get("encoders") or {}).items()}
            return cls(AdapterConfig.from_dict(data["adapter"]), LlmIdentity.from_dict(data["llm"]), encoder,
                       check_format(data["prompt_format"]), data.get("source", {}), encoders=encoders)
        except (KeyError, TypeError) as exc:
            raise MullamaError(f"{where} is incomplete ({exc})") from None


def canonical_name(name: str) -> str:
    """Module parameter name -> saved name: `music_adapter.` -> `adapter.`, `model.` -> `llm.`, no PEFT wrappers."""
    if name.startswith("music_adapter."):
        return "adapter." + name.removeprefix("music_adapter.")
    if name.startswith("model."):
        name = "llm." + name.removeprefix("model.")
        name = name.replace(".base_layer.", ".")
        return re.sub(r"\.(lora_[AB])\.[^.]+\.weight$", r".\1", name)
    raise ValueError(f"{name} is not part of the trained set")


def trained_parameters(model: MusicLlamaForCausalLM) -> dict[str, nn.Parameter]:
    """What an adapter folder holds for this model: the adapter, plus the stage-2 set when stage 2 is on."""
    adapter = model.music_adapter
    if adapter is None:
        raise MullamaError("no music adapter attached")
    chosen = stage1_parameters(model)
    if adapter.config.stage2:
        chosen.update(stage2_parameters(model))
    return {canonical_name(name): parameter for name, parameter in chosen.items()}


def write_adapter(folder: str | Path, tensors: dict[str, torch.Tensor], manifest: AdapterManifest) -> Path:
    """Write tensors then manifest, each flushed and renamed into place (durable.py), so a folder with a
    manifest is complete even after a crash or power cut."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    temporary = temporary_name(weights)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, temporary,
              metadata={"format": "pt", "mullama": f"{FORMAT} v{FORMAT_VERSION}"})
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # an old manifest must never describe the new weights
    publish(temporary, weights)
    write_atomic(folder / MANIFEST_FILE, json.dumps(manifest.to_dict(), indent=2).encode())
    return folder


def save_adapter(folder: str | Path, model: MusicLlamaForCausalLM, manifest: AdapterManifest) -> Path:
    return write_adapter(folder, dict(trained_parameters(model)), manifest)


def read_manifest(folder: str | Path) -> AdapterManifest:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise MullamaError(f"{folder} is not an adapter folder: {MANIFEST_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise MullamaError(f"{path} is not valid JSON ({exc})") from None
    return AdapterManifest.from_dict(data, str(path))


def load_adapter_weights(folder: str | Path, model: MusicLlamaForCausalLM) -> None:
    """Copy every saved tensor into the model; the names and shapes must match exactly, both ways."""
    path = Path(folder) / WEIGHTS_FILE
    try:
        saved = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise MullamaError(f"cannot read {path}: {exc}") from None
    expected = trained_parameters(model)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise MullamaError(f"{path} does not match the adapter settings in {MANIFEST_FILE}: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    with torch.no_grad():
        for name, parameter in expected.items():
            if saved[name].shape != parameter.shape:
                raise MullamaError(f"{path}: {name} has shape {tuple(saved[name].shape)}, "
                                   f"the model expects {tuple(parameter.shape)}")
            parameter.copy_(saved[name])
