"""Stage-2 additions (docs/adapter.md) and the exact trainable sets of both stages.

Biases: zero-initialised, on q, o, gate, up and down (not k, v). LoRA through PEFT on all seven
projections: lora_A the default Linear init, lora_B zero, scaling 1 (alpha = rank).
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from mullama.errors import MullamaError
from mullama.model.llm import MusicLlamaForCausalLM

BIAS_TARGETS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_ADAPTER = "default"
_NORM = re.compile(r"model\.(layers\.\d+\.(input_layernorm|post_attention_layernorm)|norm)\.weight")
_BIAS = re.compile(r"model\.layers\.\d+\.(%s)(\.base_layer)?\.bias" % "|".join(re.escape(t) for t in BIAS_TARGETS))
_LORA = re.compile(r"model\.layers\.\d+\.\w+\.\w+\.lora_[AB]\.%s\.weight" % LORA_ADAPTER)


def add_biases(model: MusicLlamaForCausalLM) -> None:
    """Give q, o, gate, up and down of every layer a zero bias (in the weight's dtype and device)."""
    for layer in model.model.layers:
        for target in BIAS_TARGETS:
            linear = layer.get_submodule(target)
            if linear.bias is not None:
                raise MullamaError(f"{target} already has a bias: stage-2 biases need a LLaMA without biases")
            weight = linear.weight
            linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))


def add_lora(model: MusicLlamaForCausalLM, rank: int) -> None:
    """Inject LoRA into the LLaMA body (never into the music adapter) with PEFT, in the weights' dtype."""
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none",
                        init_lora_weights=True)
    dtype = model.model.embed_tokens.weight.dtype
    inject_adapter_in_model(config, model.model, adapter_name=LORA_ADAPTER)
    for name, parameter in model.model.named_parameters():
        if ".lora_" in name:
            parameter.data = parameter.data.to(dtype)


def add_stage2(model: MusicLlamaForCausalLM, biases: bool = True, lora_rank: int = 16) -> None:
    if biases:
        add_biases(model)
    if lora_rank > 0:
        add_lora(model, lora_rank)


def stage1_parameters(model: MusicLlamaForCausalLM) -> dict[str, nn.Parameter]:
    """Aggregator, projection, bridge, prefix and gates: the whole music adapter, nothing of LLaMA."""
    return {name: p for name, p in model.named_parameters() if name.startswith("music_adapter.")}


def stage2_parameters(model: MusicLlamaForCausalLM) -> dict[str, nn.Parameter]:
    """LLaMA's RMSNorms, the stage-2 biases and the LoRA matrices; the adapter stays frozen."""
    return {name: p for name, p in model.named_parameters()
            if _NORM.fullmatch(name) or _BIAS.fullmatch(name) or _LORA.fullmatch(name)}


def set_trainable(model: MusicLlamaForCausalLM, stage: int) -> dict[str, nn.Parameter]:
    """Mark exactly one stage's set trainable (everything else frozen) and return it."""
    if stage not in (1, 2):
        raise MullamaError(f"stage must be 1 or 2, got {stage}")
    chosen = stage1_parameters(model) if stage == 1 else stage2_parameters(model)
    if stage == 2 and not any(_BIAS.fullmatch(n) or _LORA.fullmatch(n) for n in chosen):
        raise MullamaError("stage 2 needs the stage-2 biases or LoRA: create the model with stage 2 enabled")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    return chosen
