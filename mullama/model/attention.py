"""The gated music prompt inside LLaMA's attention, as a registered transformers attention function.

transformers calls the function named by `config._attn_implementation` with the layer's module, its
rotated queries, keys, values and mask, plus every extra keyword argument given to the model call. Ours
delegates to the stock function (sdpa, eager, flash...) and adds the gated term of docs/adapter.md before o_proj, so
none of the library's attention code is copied and KV caching, masks and batching stay the library's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.models.llama.modeling_llama import eager_attention_forward

from mullama.errors import MullamaError

PREFIX = "mullama_"
CONTEXT_KEY = "music_context"
ATTENTION_FUNCTIONS = AttentionInterface()  # views of transformers' global registries
MASK_FUNCTIONS = AttentionMaskInterface()


@dataclass(frozen=True)
class MusicContext:
    """What the adapted layers need at one model call: the per-sample prompts and the gates."""

    prompts: torch.Tensor  # (B, N, Q, d_model)
    gates: torch.Tensor  # (N, heads), before tanh
    first_layer: int  # index of the first adapted decoder layer


def base_linear(module: nn.Module) -> nn.Module:
    """The frozen projection under a PEFT LoRA wrapper: the prompt path never goes through LoRA."""
    return getattr(module, "base_layer", module)


def _per_head(states: torch.Tensor, head_dim: int, groups: int) -> torch.Tensor:
    """(B, Q, kv_heads*head_dim) -> (B, heads, Q, head_dim), repeating key/value heads for grouped-query attention."""
    batch, length, _ = states.shape
    heads = states.view(batch, length, -1, head_dim).transpose(1, 2)
    return heads.repeat_interleave(groups, dim=1) if groups > 1 else heads


def adapter_term(module: nn.Module, query: torch.Tensor, context: MusicContext) -> torch.Tensor | None:
    """The gated prompt contribution of one layer as (B, T, heads, head_dim), or None before the adapted layers.

    query_len 1: tanh(gate_h) * V(prompt)_h at every position (no softmax, no rotary on the prompt).
    query_len > 1: tanh(gate_h) * softmax(q . K(prompt) / sqrt(head_dim)) V(prompt), its own softmax.
    """
    index = module.layer_idx - context.first_layer
    if index < 0:
        return None
    prompt = context.prompts[:, index]
    batch, length = query.shape[0], prompt.shape[1]
    if prompt.shape[0] != batch:
        raise MullamaError(f"music prompt batch {prompt.shape[0]} does not match the text batch {batch}")
    v_proj = base_linear(module.v_proj)
    prompt = prompt.to(v_proj.weight.dtype)
    head_dim, groups = module.head_dim, module.num_key_value_groups
    values = _per_head(v_proj(prompt), head_dim, groups)
    gate = torch.tanh(context.gates[index].float()).to(query.dtype).view(1, -1, 1, 1)
    if length == 1:
        term = gate * values.to(query.dtype)
    else:
        keys = _per_head(base_linear(module.k_proj)(prompt), head_dim, groups)
        scores = torch.matmul(query, keys.to(query.dtype).transpose(2, 3)) / head_dim ** 0.5
        weights = F.softmax(scores.float(), dim=-1).to(query.dtype)
        term = gate * torch.matmul(weights, values.to(query.dtype))
    return term.transpose(1, 2)


def _wrap(base: Callable[..., Any]) -> Callable[..., Any]:
    def music_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        context: MusicContext | None = kwargs.pop(CONTEXT_KEY, None)
        output, weights = base(module, query, key, value, attention_mask, **kwargs)
        if context is not None:
            term = adapter_term(module, query, context)
            if term is not None:
                output = output + term
        return output, weights

    return music_attention


def _base_function(base: str) -> Callable[..., Any]:
    if base == "eager":
        return eager_attention_forward
    if base not in ATTENTION_FUNCTIONS:
        raise MullamaError(f"attention implementation {base!r} is not available; use sdpa or eager")
    return ATTENTION_FUNCTIONS[base]


def register_music_attention(base: str = "sdpa") -> str:
    """Register the music attention over `base` (with `base`'s mask function) and return its name.

    The mask function must be registered under the same name: masks are looked up by implementation name,
    and an unknown name silently gets no causal mask at all.
    """
    base = base.removeprefix(PREFIX)
    name = PREFIX + base
    if name not in ATTENTION_FUNCTIONS:
        if base not in MASK_FUNCTIONS:
            raise MullamaError(f"attention implementation {base!r} has no mask function; use sdpa or eager")
        AttentionInterface.register(name, _wrap(_base_function(base)))
        AttentionMaskInterface.register(name, MASK_FUNCTIONS[base])
    return name
