"""Hyper-parameters of the trained part and generation defaults: plain dataclasses, no torch import.

Every size comes from the encoder's stack shape and the LLM's config (docs/adapter.md), so the same code serves
MERT-95M or -330M stacks and any Llama-family size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

from mullama.errors import MullamaError

# MU-LLaMA adapts the last 20 of LLaMA-2-7B's 32 layers; other depths keep that proportion.
MU_LLAMA_ADAPTED_LAYERS = 20
MU_LLAMA_REFERENCE_LAYERS = 32
# MuMu-LLaMA gives each input modality 6 of the 32 layers: audio, image and video in that order end at the last.
MUMU_LAYERS_PER_MODALITY = 6
MUMU_BRIDGE_EXPANSION = 1  # its bridges keep the width (4096 -> 4096), where MU-LLaMA's widen 4x
MODALITY_ORDER = ("audio", "image", "video")


def default_adapted_layers(num_layers: int) -> int:
    """20 for a 32-layer model, the same 5/8 share of the depth otherwise (at least one layer)."""
    if num_layers == MU_LLAMA_REFERENCE_LAYERS:
        return MU_LLAMA_ADAPTED_LAYERS
    return max(1, min(num_layers, round(num_layers * MU_LLAMA_ADAPTED_LAYERS / MU_LLAMA_REFERENCE_LAYERS)))


def default_layers_per_modality(num_layers: int, modalities: int) -> int:
    """6 for a 32-layer model, the same share otherwise, at least one, and all blocks within the depth."""
    share = round(num_layers * MUMU_LAYERS_PER_MODALITY / MU_LLAMA_REFERENCE_LAYERS)
    return max(1, min(share, num_layers // max(1, modalities)))


@dataclass(frozen=True)
class Branch:
    """One input modality of a multi-modal adapter and the shape of its encoder's stacks (tokens x width for
    images and videos)."""

    modality: str
    hidden_states: int
    encoder_hidden_size: int


@dataclass(frozen=True)
class AdapterConfig:
    """Shapes of the adapter and of the optional stage-2 additions (docs/adapter.md)."""

    hidden_states: int  # L+1 layers in the encoder's stack
    encoder_hidden_size: int  # H of the stack
    d_model: int  # the LLM's hidden size
    num_heads: int  # the LLM's attention heads: one gate per head
    num_layers: int  # the LLM's decoder layers
    adapted_layers: int  # the last N layers receive the music prompt
    query_len: int = 1  # prompt vectors per adapted layer
    bridge_blocks: int = 3
    bridge_expansion: int = 4
    bridge_norm_eps: float = 1e-6
    stage2_biases: bool = False  # zero-initialised biases on q, o, gate, up, down
    lora_rank: int = 0  # 0: no LoRA
    # MuMu-LLaMA's layout: one branch per modality, each adapting its own block of `adapted_layers` layers,
    # blocks consecutive and ending at the last layer in `branches` order. Empty: MU-LLaMA's single audio adapter
    # (hidden_states, encoder_hidden_size). With branches, those two fields repeat the first branch's shape.
    branches: tuple[Branch, ...] = ()
    first_layer: int = -1  # a branch's own first layer inside a multi-modal adapter; -1: the last N layers

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(b if isinstance(b, Branch) else Branch(**b)
                                                   for b in self.branches))
        for name in ("hidden_states", "encoder_hidden_size", "d_model", "num_heads", "num_layers", "adapted_layers",
                     "query_len", "bridge_blocks", "bridge_expansion"):
            if int(getattr(self, name)) < 1:
                raise MullamaError(f"adapter setting {name} must be at least 1, got {getattr(self, name)}")
        if self.adapted_layers * max(1, len(self.branches)) > self.num_layers:
            raise MullamaError(f"cannot adapt {self.adapted_layers} layers per modality x {len(self.branches) or 1} "
                               f"of a {self.num_layers}-layer LLM")
        modalities = [b.modality for b in self.branches]
        if len(set(modalities)) != len(modalities) or any(m not in MODALITY_ORDER for m in modalities):
            raise MullamaError(f"adapter branches {modalities}: each of {', '.join(MODALITY_ORDER)} at most once")
        if self.lora_rank < 0:
            raise MullamaError(f"LoRA rank must be >= 0, got {self.lora_rank}")

    @property
    def first_adapted_layer(self) -> int:
        if self.first_layer >= 0:
            return self.first_layer
        return self.num_layers - self.adapted_layers * max(1, len(self.branches))

    @property
    def total_adapted_layers(self) -> int:
        return self.adapted_layers * max(1, len(self.branches))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(b.modality for b in self.branches) or ("audio",)

    def branch_config(self, modality: str) -> "AdapterConfig":
        """The single-branch config of one modality's branch: its stack shape and its block of layers."""
        index = self.modalities.index(modality)
        branch = self.branches[index]
        return dataclasses.replace(self, branches=(), hidden_states=branch.hidden_states,
                                   encoder_hidden_size=branch.encoder_hidden_size,
                                   first_layer=self.first_adapted_layer + index * self.adapted_layers)

    @property
    def stage2(self) -> bool:
        return self.stage2_biases or self.lora_rank > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MullamaError(f"adapter settings {', '.join(unknown)} are unknown to this mullama version")
        return cls(**data)


@dataclass(frozen=True)
class GenerationSettings:
    """KV-cached sampling (defaults: docs/recipes.md). temperature 0 means greedy decoding."""

    temperature: float = 0.6
    top_p: float = 0.8
    max_new_tokens: int = 512
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise MullamaError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MullamaError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise MullamaError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
