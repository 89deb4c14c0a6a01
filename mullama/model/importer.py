"""Import the released MU-LLaMA checkpoint (docs/released-checkpoint.md) into a mullama adapter folder.

The checkpoint is one pickle holding the full model in Meta's LLaMA layout (plus MERT and optimizer
state). It is read memory-mapped with only `argparse.Namespace` allow-listed, so nothing arbitrary is
unpickled and the 17 GB file never sits in RAM. Only the trained tensors are written; the frozen LLaMA
weights are compared with the given Hugging Face LLaMA instead, after the rotary permutation.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.model.checkpoint import AdapterManifest, write_adapter
from mullama.model.identity import read_llm_identity
from mullama.model.llama_files import LlamaFiles
from mullama.model.prompts import MU_LLAMA
from mullama.model.settings import AdapterConfig
from mullama.outputs import refuse_output_over_inputs

ADAPTER_PREFIXES = ("mu_mert_", "mert_")  # LLaMA-2 era, LLaMA-1 era
IGNORED_PREFIX = "mert_model."  # the frozen MERT: the feature store's job
LAYER = re.compile(r"llama\.layers\.(\d+)\.")
MERT_330M = ("m-a-p/MERT-v1-330M", 25, 1024)
SAMPLE_RATE = 24000

# (Meta name inside a layer, Hugging Face name inside a layer, which heads index its output rows)
PROJECTIONS = (("attention.wq", "self_attn.q_proj", "q"), ("attention.wk", "self_attn.k_proj", "kv"),
               ("attention.wv", "self_attn.v_proj", None), ("attention.wo", "self_attn.o_proj", None),
               ("feed_forward.w1", "mlp.gate_proj", None), ("feed_forward.w3", "mlp.up_proj", None),
               ("feed_forward.w2", "mlp.down_proj", None))
LORA = (("attention.lora_wq", "self_attn.q_proj", "q"), ("attention.lora_wk", "self_attn.k_proj", "kv"),
        ("attention.lora_wv", "self_attn.v_proj", None), ("attention.lora_wo", "self_attn.o_proj", None),
        ("feed_forward.lora_w1", "mlp.gate_proj", None), ("feed_forward.lora_w3", "mlp.up_proj", None),
        ("feed_forward.lora_w2", "mlp.down_proj", None))
BIASES = (("attention.wq", "self_attn.q_proj", "q"), ("attention.wo", "self_attn.o_proj", None),
          ("feed_forward.w1", "mlp.gate_proj", None), ("feed_forward.w3", "mlp.up_proj", None),
          ("feed_forward.w2", "mlp.down_proj", None))
NORMS = (("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"))


def meta_to_hf_rows(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the output rows of a rotary projection from Meta's interleaved pairs to HF's half split.

    Per head, Meta pairs dimensions (2i, 2i+1); Hugging Face pairs (i, i + head_dim/2). Applies to the
    weights of q and k and to every tensor indexed by their output rows (q bias, LoRA up matrices).
    """
    rows, rest = tensor.shape[0], tuple(tensor.shape[1:])
    return tensor.reshape(heads, rows // heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


@dataclass
class ImportReport:
    out: Path
    llama: Path
    config: AdapterConfig
    legacy_names: bool
    tensors_written: int
    frozen_checked: int
    differing: list[str] = field(default_factory=list)  # frozen tensors unlike the given LLaMA's
    missing: list[str] = field(default_factory=list)  # frozen tensors the given LLaMA lacks
    ignored: int = 0  # mert_model.* tensors
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def llama_matches(self) -> bool:
        return not self.differing and not self.missing

    @property
    def exit_code(self) -> int:
        return 0 if self.llama_matches else 1

    def lines(self) -> list[str]:
        """What was imported and, when the frozen weights differ from the given LLaMA, each difference."""
        llama = self.llama
        adapter = self.config
        stage = (f"stage 2 (biases {'on' if adapter.stage2_biases else 'off'}, LoRA rank {adapter.lora_rank})"
                 if adapter.stage2 else "stage 1")
        lines = [f"wrote {self.tensors_written} tensors to {self.out}: {stage}, last {adapter.adapted_layers} of "
                 f"{adapter.num_layers} layers adapted, {adapter.hidden_states} x {adapter.encoder_hidden_size} "
                 "stacks" + (" (LLaMA-1-era names)" if self.legacy_names else ""),
                 f"ignored {self.ignored} MERT tensors; checked {self.frozen_checked} frozen LLaMA tensors"]
        lines += [f"note: {note}" for note in self.notes]
        if self.unknown:
            lines.append(f"unrecognised keys ({len(self.unknown)}): {', '.join(self.unknown[:10])}")
        if self.llama_matches:
            return lines + [f"frozen LLaMA weights match {llama}"]
        lines += [f"MISSING in {llama}: {line}" for line in self.missing]
        lines += [f"DIFFERS: {line}" for line in self.differing]
        return lines + [f"the frozen LLaMA weights of the checkpoint do not match {llama}: answers will be wrong "
                        "unless you give the LLaMA it was trained on"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the other top-level entries, read safely and memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise MullamaError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it pickles {found.group(1)}" if found else _first_line(exc)
        raise MullamaError(f"{path} is not a MU-LLaMA checkpoint: the safe load (tensors and argparse.Namespace "
                           f"only) refuses it: {what}") from None
    except (RuntimeError, ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise MullamaError(f"{path} is not a PyTorch checkpoint that can be read memory-mapped "
                           f"({_first_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        state, extras = data["model"], {k: v for k, v in data.items() if k != "model"}
    elif isinstance(data, dict):
        state, extras = data, {}
    else:
        raise MullamaError(f"{path} is not a MU-LLaMA checkpoint: it holds a {type(data).__name__}, not a dict")
    return state, extras


def adapter_prefix(state: dict[str, Any], path: Path) -> str:
    for prefix in ADAPTER_PREFIXES:
        if f"{prefix}agg.weight" in state and "prefix_query.weight" in state:
            return prefix
    sample = ", ".join(sorted(map(str, state))[:5])
    raise MullamaError(f"{path} is not a MU-LLaMA checkpoint: it has no mu_mert_agg / mert_agg aggregator and "
                       f"prefix_query (keys start: {sample or 'none'})")


def json_safe(value: Any) -> Any:
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


class _Reader:
    """Takes tensors out of the state dict and remembers which keys were used."""

    def __init__(self, state: dict[str, torch.Tensor], path: Path):
        self.state, self.path, self.used = state, path, set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in self.state:
            raise MullamaError(f"{self.path} lacks {key}: an incomplete or different MU-LLaMA checkpoint")
        tensor = self.state[key]
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise MullamaError(f"{self.path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(shape)} "
                               "for the given LLaMA (is it the LLaMA the checkpoint was trained on?)")
        self.used.add(key)
        return tensor


def _adapter_config(read: _Reader, prefix: str, llm: Any, query_len: int) -> AdapterConfig:
    state, path = read.state, read.path
    if f"{prefix}norm_1.bias" in state or f"{prefix}f1_1.bias" in state:
        raise MullamaError(f"{path} uses the legacy LayerNorm bridge with biases, which mullama does not implement")
    layers = 1 + max((int(m.group(1)) for k in state if (m := LAYER.match(str(k)))), default=-1)
    if layers != llm.num_hidden_layers:
        raise MullamaError(f"{path} has {layers} LLaMA layers; the given LLaMA has {llm.num_hidden_layers}")
    hidden_states = read.get(f"{prefix}agg.weight").shape[1]
    encoder_hidden = read.get(f"{prefix}proj.weight").shape[1]
    blocks = sum(1 for b in range(1, 64) if f"{prefix}norm_{b}.weight" in state)
    expansion = read.get(f"{prefix}f1_1.weight").shape[0] // llm.hidden_size
    rows = read.get("prefix_query.weight").shape[0]
    if query_len < 1 or rows % query_len:
        raise MullamaError(f"{path}: a {rows}-row prefix table cannot hold query_len {query_len} prompts per layer")
    has_bias = "llama.layers.0.attention.wq.bias" in state
    lora = "llama.layers.0.attention.lora_wq_l1.weight"
    return AdapterConfig(
        hidden_states=hidden_states, encoder_hidden_size=encoder_hidden, d_model=llm.hidden_size,
        num_heads=llm.num_attention_heads, num_layers=layers, adapted_layers=rows // query_len, query_len=query_len,
        bridge_blocks=blocks, bridge_expansion=expansion, stage2_biases=has_bias,
        lora_rank=read.get(lora).shape[0] if lora in state else 0)


def _adapter_tensors(read: _Reader, prefix: str, config: AdapterConfig, llm: Any) -> dict[str, torch.Tensor]:
    d, hidden = config.d_model, config.bridge_expansion * config.d_model
    out = {
        "adapter.aggregator.weight": read.get(f"{prefix}agg.weight", (1, config.hidden_states, 1)),
        "adapter.aggregator.bias": read.get(f"{prefix}agg.bias", (1,)),
        "adapter.projection.weight": read.get(f"{prefix}proj.weight", (d, config.encoder_hidden_size)),
        "adapter.projection.bias": read.get(f"{prefix}proj.bias", (d,)),
        "adapter.prefix.weight": read.get("prefix_query.weight", (config.adapted_layers * config.query_len, d)),
    }
    for block in range(config.bridge_blocks):
        number = block + 1
        out[f"adapter.bridge.{block}.norm.weight"] = read.get(f"{prefix}norm_{number}.weight", (d,))
        out[f"adapter.bridge.{block}.w1.weight"] = read.get(f"{prefix}f1_{number}.weight", (hidden, d))
        out[f"adapter.bridge.{block}.w2.weight"] = read.get(f"{prefix}f2_{number}.weight", (d, hidden))
        out[f"adapter.bridge.{block}.w3.weight"] = read.get(f"{prefix}f3_{number}.weight", (hidden, d))
    heads = llm.num_attention_heads
    gates = [read.get(f"llama.layers.{i}.attention.gate", (1, heads, 1, 1)).reshape(heads)
             for i in range(config.first_adapted_layer, config.num_layers)]
    out["adapter.gates"] = torch.stack(gates)
    return out


def _stage2_tensors(read: _Reader, config: AdapterConfig, llm: Any) -> dict[str, torch.Tensor]:
    heads = {"q": llm.num_attention_heads, "kv": llm.num_key_value_heads}
    out = {}
    for i in range(config.num_layers):
        meta, hf = f"llama.layers.{i}.", f"llm.layers.{i}."
        if config.stage2_biases:
            for meta_name, hf_name, rows in BIASES:
                bias = read.get(f"{meta}{meta_name}.bias")
                out[f"{hf}{hf_name}.bias"] = meta_to_hf_rows(bias, heads[rows]) if rows else bias
        if config.lora_rank:
            for meta_name, hf_name, rows in LORA:
                down = read.get(f"{meta}{meta_name}_l1.weight")
                up = read.get(f"{meta}{meta_name}_l2.weight")
                out[f"{hf}{hf_name}.lora_A"] = down
                out[f"{hf}{hf_name}.lora_B"] = meta_to_hf_rows(up, heads[rows]) if rows else up
        for meta_name, hf_name in NORMS:
            out[f"{hf}{hf_name}.weight"] = read.get(f"{meta}{meta_name}.weight")
    out["llm.norm.weight"] = read.get("llama.norm.weight")
    return out


def frozen_pairs(config: AdapterConfig, llm: Any) -> list[tuple[str, str, int | None]]:
    """(Meta name, HF name, heads to permute by) of every frozen LLaMA tensor; norms too when stage 1."""
    pairs: list[tuple[str, str, int | None]] = [("llama.tok_embeddings.weight", "model.embed_tokens.weight", None),
                                                ("llama.output.weight", "lm_head.weight", None)]
    heads = {"q": llm.num_attention_heads, "kv": llm.num_key_value_heads, None: None}
    for i in range(config.num_layers):
        for meta_name, hf_name, rows in PROJECTIONS:
            pairs.append((f"llama.layers.{i}.{meta_name}.weight", f"model.layers.{i}.{hf_name}.weight", heads[rows]))
        if not config.stage2:
            for meta_name, hf_name in NORMS:
                pairs.append((f"llama.layers.{i}.{meta_name}.weight", f"model.layers.{i}.{hf_name}.weight", None))
    if not config.stage2:
        pairs.append(("llama.norm.weight", "model.norm.weight", None))
    return pairs


def _compare(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float, block: int = 1024) -> float | None:
    """Largest difference if any element is off by more than tolerance (relative; 1e-2 x tolerance absolute).

    Compared in blocks of rows, so a 32000 x 4096 embedding never needs gigabytes of float32 copies.
    """
    if ours.shape != theirs.shape:
        return float("inf")
    worst, off = 0.0, False
    for start in range(0, ours.shape[0], block):
        a, b = ours[start:start + block].to(torch.float32), theirs[start:start + block].to(torch.float32)
        difference = (a - b).abs()
        off = off or bool((difference > tolerance * b.abs() + tolerance * 1e-2).any())
        worst = max(worst, float(difference.max()))
    return worst if off else None


def check_frozen(read: _Reader, files: LlamaFiles, config: AdapterConfig, llm: Any, tolerance: float,
                 report: ImportReport) -> None:
    for meta_name, hf_name, heads in frozen_pairs(config, llm):
        ours = read.get(meta_name)
        if heads:
            ours = meta_to_hf_rows(ours, heads)
        if hf_name not in files:
            if hf_name == "lm_head.weight" and getattr(llm, "tie_word_embeddings", False):
                hf_name = "model.embed_tokens.weight"
            else:
                report.missing.append(hf_name)
                continue
        difference = _compare(ours, files.tensor(hf_name), tolerance)
        report.frozen_checked += 1
        if difference is not None:
            report.differing.append(f"{meta_name} (HF {hf_name}): max |difference| {difference:.3g}")


def declared_encoder(config: AdapterConfig) -> EncoderIdentity:
    """Without a MERT folder, pin only the stack shape (and name MERT-v1-330M when the shape is its)."""
    name = MERT_330M[0] if (config.hidden_states, config.encoder_hidden_size) == MERT_330M[1:] else "unknown encoder"
    return EncoderIdentity(name=name, config_hash="", weights_hash="", sample_rate=SAMPLE_RATE,
                           hidden_states=config.hidden_states, hidden_size=config.encoder_hidden_size)


def import_mu_llama(checkpoint: str | Path, llama_dir: str | Path, out: str | Path, *, query_len: int = 1,
                    encoder: EncoderIdentity | None = None, tolerance: float = 1e-3) -> ImportReport:
    """Map the released checkpoint into `out` (adapter.safetensors + adapter.json) and report what it found."""
    refuse_output_over_inputs(out, {"CHECKPOINT": checkpoint, "--llama": llama_dir})
    path = Path(checkpoint)
    files = LlamaFiles(llama_dir)
    llm = files.config
    state, extras = load_checkpoint(path)
    prefix = adapter_prefix(state, path)
    read = _Reader(state, path)
    config = _adapter_config(read, prefix, llm, query_len)
    read.get("llama.tok_embeddings.weight", (llm.vocab_size, llm.hidden_size))
    if encoder is not None and (encoder.hidden_states, encoder.hidden_size) != (config.hidden_states,
                                                                                config.encoder_hidden_size):
        raise MullamaError(f"the checkpoint's adapter takes {config.hidden_states} x {config.encoder_hidden_size} "
                           f"stacks; encoder {encoder.name} gives {encoder.hidden_states} x {encoder.hidden_size}")
    tensors = _adapter_tensors(read, prefix, config, llm)
    if config.stage2:
        tensors.update(_stage2_tensors(read, config, llm))
    report = ImportReport(out=Path(out), llama=Path(llama_dir), config=config, legacy_names=prefix != ADAPTER_PREFIXES[0],
                          tensors_written=len(tensors), frozen_checked=0)
    check_frozen(read, files, config, llm, tolerance, report)
    for i in range(config.first_adapted_layer):
        gate = f"llama.layers.{i}.attention.gate"
        if gate in state:
            read.used.add(gate)
            if bool(state[gate].any()):
                report.notes.append(f"{gate} is non-zero but layer {i} is not adapted; it is ignored")
    report.ignored = sum(1 for k in state if str(k).startswith(IGNORED_PREFIX))
    report.unknown = sorted(str(k) for k in state if k not in read.used and not str(k).startswith(IGNORED_PREFIX))
    manifest = AdapterManifest(
        config=config, llm=read_llm_identity(llama_dir, files), encoder=encoder or declared_encoder(config),
        prompt_format=MU_LLAMA,
        source={"imported_from": path.name, "legacy_names": report.legacy_names,
                "epoch": json_safe(extras.get("epoch")), "args": json_safe(extras.get("args"))})
    write_adapter(out, tensors, manifest)
    return report
