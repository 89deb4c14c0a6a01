"""Hyper-parameters of the trained part and generation defaults: plain dataclasses, no torch import.

Every size comes from the encoder's stack shape and the LLM's config (docs/adapter.md), so the same code serves
MERT-95M or -330M stacks and any Llama-family size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mullama.errors import MullamaError

# MU-LLaMA adapts the last 20 of LLaMA-2-7B's 32 layers; other depths keep that proportion.
MU_LLAMA_ADAPTED_LAYERS = 20
MU_LLAMA_REFERENCE_LAYERS = 32


def default_adapted_layers(num_layers: int) -> int:
    """20 for a 32-layer model, the same 5/8 share of the depth otherwise (at least one layer)."""
    if num_layers == MU_LLAMA_REFERENCE_LAYERS:
        return MU_LLAMA_ADAPTED_LAYERS
    return max(1, min(num_layers, round(num_layers * MU_LLAMA_ADAPTED_LAYERS / MU_LLAMA_REFERENCE_LAYERS)))


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

    def __post_init__(self) -> None:
        for name in ("hidden_states", "encoder_hidden_size", "d_model", "num_heads", "num_layers", "adapted_layers",
                     "query_len", "bridge_blocks", "bridge_expansion"):
            if int(getattr(self, name)) < 1:
                raise MullamaError(f"adapter setting {name} must be at least 1, got {getattr(self, name)}")
        if self.adapted_layers > self.num_layers:
            raise MullamaError(f"cannot adapt {self.adapted_layers} layers of a {self.num_layers}-layer LLM")
        if self.lora_rank < 0:
            raise MullamaError(f"LoRA rank must be >= 0, got {self.lora_rank}")

    @property
    def first_adapted_layer(self) -> int:
        return self.num_layers - self.adapted_layers

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
