"""Which LLM a trained adapter belongs to, and the checks run before the two are put together.

An adapter only means something on the exact LLM (and encoder) it was trained with. A config hash catches
a different architecture (refused); a tokenizer hash and a cheap weights fingerprint catch a different
checkpoint of the same architecture, e.g. LLaMA-2 chat instead of base (warned, or refused when strict).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.hub_ids import identity_origin
from mullama.model.llama_files import LlamaFiles
from mullama.records import Record

# The config fields that decide what the network computes; names, dtypes and versions are left out.
CONFIG_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
                 "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings")
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
FINGERPRINT_TENSORS = ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight")
FINGERPRINT_ROWS = 4


class IdentityWarning(UserWarning):
    """An adapter meets an LLM or encoder that may differ from the one it was trained with."""


@dataclass(frozen=True)
class LlmIdentity(Record):
    name: str
    config_hash: str
    tokenizer_hash: str
    weights_fingerprint: str
    hub_id: str = ""  # the Hugging Face Hub repo the weights came from ("" : a local folder), for provenance only
    hub_commit: str = ""


def config_hash(config: Any) -> str:
    values = {field: getattr(config, field, None) for field in CONFIG_FIELDS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_hash(folder: Path) -> str:
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()
    return ""


def weights_fingerprint(files: LlamaFiles) -> str:
    """sha256 of the first rows of a few tensors, as float32: reads kilobytes, not gigabytes."""
    digest = hashlib.sha256()
    for name in FINGERPRINT_TENSORS:
        if name in files:
            digest.update(name.encode())
            digest.update(files.head(name, FINGERPRINT_ROWS).to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_llm_identity(folder: str | Path, files: LlamaFiles | None = None) -> LlmIdentity:
    folder = Path(folder)
    files = files or LlamaFiles(folder)
    return LlmIdentity(config_hash=config_hash(files.config), tokenizer_hash=tokenizer_hash(folder),
                       weights_fingerprint=weights_fingerprint(files),
                       **identity_origin(folder, files.raw_config, folder.resolve().name))


def _differs(what: str, detail: str, strict: bool) -> None:
    message = f"{what} differs from the one the adapter was trained with ({detail})"
    if strict:
        raise MullamaError(message)
    warnings.warn(message, IdentityWarning, stacklevel=3)


def check_llm(trained: LlmIdentity, given: LlmIdentity, strict: bool = False) -> None:
    """Refuse another architecture; warn (or refuse when strict) on another tokenizer or other weights."""
    if trained.config_hash != given.config_hash:
        raise MullamaError(f"the adapter was trained on LLM {trained.name!r} with another configuration than "
                           f"{given.name!r} (config hash {trained.config_hash[:12]} vs {given.config_hash[:12]}); "
                           "give the LLaMA folder it was trained with")
    if trained.tokenizer_hash and given.tokenizer_hash and trained.tokenizer_hash != given.tokenizer_hash:
        _differs(f"the tokenizer of {given.name!r}", "tokenizer hash", strict)
    if trained.weights_fingerprint != given.weights_fingerprint:
        _differs(f"the LLM weights of {given.name!r}", f"trained with {trained.name!r}; weights fingerprint", strict)


def check_encoder(trained: EncoderIdentity | None, given: EncoderIdentity | None, strict: bool = False) -> None:
    """Refuse stacks of another shape; warn (or refuse when strict) on another encoder of the same shape.

    Empty hashes in the adapter's record (an import without a MERT folder) pin only the shape.
    """
    if trained is None or given is None:
        return
    if (trained.hidden_states, trained.hidden_size) != (given.hidden_states, given.hidden_size):
        raise MullamaError(f"the adapter expects {trained.hidden_states} x {trained.hidden_size} layer stacks "
                           f"({trained.name}); encoder {given.name} gives {given.hidden_states} x {given.hidden_size}")
    pinned = trained.config_hash and trained.weights_hash
    if pinned and not trained.same_encoder(given):
        _differs(f"encoder {given.name!r}", f"trained with {trained.name!r}; config or weights hash", strict)
