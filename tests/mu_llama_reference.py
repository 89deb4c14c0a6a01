"""An independent MU-LLaMA written straight from docs/adapter.md and docs/released-checkpoint.md, in
Meta's layout, for the tests.

It builds a scaled-down checkpoint with the released key names (random values everywhere, biases and
LoRA included), a matching Hugging Face LLaMA folder, and computes logits the way the published model
does: Meta row order with complex (interleaved-pair) rotary embeddings. Nothing here imports
mullama.model, so the importer's rotary permutation and the injected attention are really checked.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


@dataclass(frozen=True)
class Shapes:
    vocab: int = 1024
    dim: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    ffn: int = 96
    hidden_states: int = 5  # L+1 of a scaled-down MERT
    encoder_hidden: int = 24
    adapted: int = 2
    query_len: int = 1
    rank: int = 4
    bridge: int = 3
    norm_eps: float = 1e-5
    theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def random_state(s: Shapes, stage2: bool = True, prefix: str = "mu_mert_", seed: int = 0) -> dict[str, torch.Tensor]:
    """A full MU-LLaMA state dict with the released names; every trained tensor non-zero."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return rand(rows, cols, scale=cols ** -0.5)

    kv = s.kv_heads * s.head_dim
    state = {
        f"{prefix}agg.weight": rand(1, s.hidden_states, 1, scale=0.5), f"{prefix}agg.bias": rand(1, scale=0.1),
        f"{prefix}proj.weight": matrix(s.dim, s.encoder_hidden), f"{prefix}proj.bias": rand(s.dim, scale=0.1),
        "prefix_query.weight": rand(s.adapted * s.query_len, s.dim, scale=0.5),
        "llama.tok_embeddings.weight": rand(s.vocab, s.dim, scale=0.5),
        "llama.output.weight": matrix(s.vocab, s.dim), "llama.norm.weight": 1 + rand(s.dim, scale=0.1),
        "mert_model.feature_extractor.conv_layers.0.conv.weight": rand(8, 1, 10),
        "mert_model.encoder.layers.0.attention.k_proj.weight": rand(8, 8),
    }
    for b in range(1, s.bridge + 1):
        state[f"{prefix}norm_{b}.weight"] = 1 + rand(s.dim, scale=0.1)
        state[f"{prefix}f1_{b}.weight"] = matrix(4 * s.dim, s.dim)
        state[f"{prefix}f2_{b}.weight"] = matrix(s.dim, 4 * s.dim)
        state[f"{prefix}f3_{b}.weight"] = matrix(4 * s.dim, s.dim)
    for i in range(s.layers):
        p = f"llama.layers.{i}."
        adapted = i >= s.layers - s.adapted
        state.update({
            p + "attention.wq.weight": matrix(s.dim, s.dim), p + "attention.wk.weight": matrix(kv, s.dim),
            p + "attention.wv.weight": matrix(kv, s.dim), p + "attention.wo.weight": matrix(s.dim, s.dim),
            p + "feed_forward.w1.weight": matrix(s.ffn, s.dim), p + "feed_forward.w2.weight": matrix(s.dim, s.ffn),
            p + "feed_forward.w3.weight": matrix(s.ffn, s.dim),
            p + "attention_norm.weight": 1 + rand(s.dim, scale=0.1), p + "ffn_norm.weight": 1 + rand(s.dim, scale=0.1),
            # every layer has a gate in the released code; only the adapted ones are ever used (and trained)
            p + "attention.gate": rand(1, s.heads, 1, 1) if adapted else torch.zeros(1, s.heads, 1, 1),
        })
        if stage2:
            for name, size in (("attention.wq", s.dim), ("attention.wo", s.dim), ("feed_forward.w1", s.ffn),
                               ("feed_forward.w2", s.dim), ("feed_forward.w3", s.ffn)):
                state[f"{p}{name}.bias"] = rand(size, scale=0.1)
            for name, fan_in, fan_out in (("attention.lora_wq", s.dim, s.dim), ("attention.lora_wk", s.dim, kv),
                                          ("attention.lora_wv", s.dim, kv), ("attention.lora_wo", s.dim, s.dim),
                                          ("feed_forward.lora_w1", s.dim, s.ffn),
                                          ("feed_forward.lora_w2", s.ffn, s.dim),
                                          ("feed_forward.lora_w3", s.dim, s.ffn)):
                state[f"{p}{name}_l1.weight"] = matrix(s.rank, fan_in)
                state[f"{p}{name}_l2.weight"] = rand(fan_out, s.rank, scale=0.2)
    return state


def save_released(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """The released file's layout: model, optimizer, epoch, scaler and an argparse.Namespace."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1.25e-4, "params": []}]},
                "epoch": 19, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(llama_type="7B", max_words=512, lr=1.25e-4, output_dir="./output")}, path)
    return path


def hf_row_order(heads: int, head_dim: int) -> torch.Tensor:
    """Meta row feeding each HF row: per head, HF row i is Meta row 2i and HF row head_dim/2 + i is 2i + 1."""
    order = []
    for h in range(heads):
        base = h * head_dim
        order += [base + 2 * i for i in range(head_dim // 2)]
        order += [base + 2 * i + 1 for i in range(head_dim // 2)]
    return torch.tensor(order)


def write_hf_llama(folder: Path, state: dict[str, torch.Tensor], s: Shapes, tokenizer_from: Path) -> Path:
    """The LLaMA of `state` as a Hugging Face folder, converted with this module's own row order."""
    folder.mkdir(parents=True, exist_ok=True)
    q_order, k_order = hf_row_order(s.heads, s.head_dim), hf_row_order(s.kv_heads, s.head_dim)
    hf = {"model.embed_tokens.weight": state["llama.tok_embeddings.weight"],
          "lm_head.weight": state["llama.output.weight"], "model.norm.weight": state["llama.norm.weight"]}
    for i in range(s.layers):
        p, h = f"llama.layers.{i}.", f"model.layers.{i}."
        hf.update({
            h + "self_attn.q_proj.weight": state[p + "attention.wq.weight"][q_order],
            h + "self_attn.k_proj.weight": state[p + "attention.wk.weight"][k_order],
            h + "self_attn.v_proj.weight": state[p + "attention.wv.weight"],
            h + "self_attn.o_proj.weight": state[p + "attention.wo.weight"],
            h + "mlp.gate_proj.weight": state[p + "feed_forward.w1.weight"],
            h + "mlp.down_proj.weight": state[p + "feed_forward.w2.weight"],
            h + "mlp.up_proj.weight": state[p + "feed_forward.w3.weight"],
            h + "input_layernorm.weight": state[p + "attention_norm.weight"],
            h + "post_attention_layernorm.weight": state[p + "ffn_norm.weight"],
        })
    save_file({k: v.contiguous() for k, v in hf.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": s.vocab,
              "hidden_size": s.dim, "intermediate_size": s.ffn, "num_hidden_layers": s.layers,
              "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "rms_norm_eps": s.norm_eps,
              "rope_theta": s.theta, "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
              "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, folder / name)
    return folder


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's rotary embedding: consecutive pairs as complex numbers times e^(i t f). x: (B, T, heads, hd)."""
    hd, length = x.shape[-1], x.shape[1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(length).float(), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], hd // 2, 2))
    return torch.view_as_real(pairs * rotation).flatten(3)


def reference_logits(state: dict[str, torch.Tensor], s: Shapes, tokens: torch.Tensor, stacks: torch.Tensor,
                     prefix: str = "mu_mert_") -> torch.Tensor:
    """Logits (B, T, V) of MU-LLaMA in fp32 from a Meta-layout state dict (stage-2 parts used when present)."""
    w = state
    b, t = tokens.shape
    hd, groups = s.head_dim, s.heads // s.kv_heads

    # docs/adapter.md: aggregator over the layer axis, L2 norm, projection, three pre-norm SwiGLU blocks.
    x = torch.einsum("blh,l->bh", stacks, w[f"{prefix}agg.weight"][0, :, 0]) + w[f"{prefix}agg.bias"]
    x = x / x.norm(dim=-1, keepdim=True)
    x = x @ w[f"{prefix}proj.weight"].T + w[f"{prefix}proj.bias"]
    for k in range(1, s.bridge + 1):
        n = _rms(x, w[f"{prefix}norm_{k}.weight"], 1e-6)
        swiglu = F.silu(n @ w[f"{prefix}f1_{k}.weight"].T) * (n @ w[f"{prefix}f3_{k}.weight"].T)
        x = x + swiglu @ w[f"{prefix}f2_{k}.weight"].T
    music = x[:, None, :]  # (B, 1, d)
    prefixes = w["prefix_query.weight"].view(s.adapted, s.query_len, s.dim)

    def linear(inp: torch.Tensor, name: str, lora: str) -> torch.Tensor:
        out = inp @ w[name + ".weight"].T
        if name + ".bias" in w:
            out = out + w[name + ".bias"]
        if lora + "_l1.weight" in w:
            out = out + (inp @ w[lora + "_l1.weight"].T) @ w[lora + "_l2.weight"].T
        return out

    h = w["llama.tok_embeddings.weight"][tokens]
    mask = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
    for i in range(s.layers):
        p = f"llama.layers.{i}."
        xn = _rms(h, w[p + "attention_norm.weight"], s.norm_eps)
        q = linear(xn, p + "attention.wq", p + "attention.lora_wq").view(b, t, s.heads, hd)
        k = linear(xn, p + "attention.wk", p + "attention.lora_wk").view(b, t, s.kv_heads, hd)
        v = linear(xn, p + "attention.wv", p + "attention.lora_wv").view(b, t, s.kv_heads, hd)
        q, k = _rotate(q, s.theta), _rotate(k, s.theta)
        q = q.transpose(1, 2)
        k, v = k.repeat_interleave(groups, 2).transpose(1, 2), v.repeat_interleave(groups, 2).transpose(1, 2)
        scores = q @ k.transpose(2, 3) / hd ** 0.5 + mask
        out = scores.softmax(-1) @ v  # (B, heads, T, hd)
        if i >= s.layers - s.adapted:
            prompt = music + prefixes[i - (s.layers - s.adapted)]  # (B, Q, d)
            # the frozen base projections only: LoRA is on the token path in the published code
            pv = (prompt @ w[p + "attention.wv.weight"].T).view(b, s.query_len, s.kv_heads, hd)
            pv = pv.repeat_interleave(groups, 2).transpose(1, 2)
            gate = torch.tanh(w[p + "attention.gate"])  # (1, heads, 1, 1)
            if s.query_len == 1:
                out = out + gate * pv
            else:
                pk = (prompt @ w[p + "attention.wk.weight"].T).view(b, s.query_len, s.kv_heads, hd)
                pk = pk.repeat_interleave(groups, 2).transpose(1, 2)
                out = out + gate * ((q @ pk.transpose(2, 3) / hd ** 0.5).softmax(-1) @ pv)
        out = out.transpose(1, 2).reshape(b, t, s.dim)
        h = h + linear(out, p + "attention.wo", p + "attention.lora_wo")
        hn = _rms(h, w[p + "ffn_norm.weight"], s.norm_eps)
        hidden = F.silu(linear(hn, p + "feed_forward.w1", p + "feed_forward.lora_w1")) * linear(
            hn, p + "feed_forward.w3", p + "feed_forward.lora_w3")
        h = h + linear(hidden, p + "feed_forward.w2", p + "feed_forward.lora_w2")
    return _rms(h, w["llama.norm.weight"], s.norm_eps) @ w["llama.output.weight"].T
