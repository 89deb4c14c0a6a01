"""Embedding recipes: how a clip's (L+1, H) layer stack becomes the one vector an index holds (docs/knn.md).

Two kinds, both recorded in full in the index's metadata so that a query is embedded exactly as the
indexed clips were, even after the adapter folder that supplied the weights has changed:

- model-free: a weighted mean of the L2-normalised layer vectors (`all`, `lower`, `middle`, `upper`,
  `last`, `layers:A-B`, `weights:w0,w1,...`), then L2-normalised;
- `adapter:FOLDER`: a trained adapter's aggregator (a weighted sum of the raw layers plus a bias), then
  L2-normalised: the music feature f that MU-LLaMA mixes with its neighbours.

A third kind, `text`, takes no stacks: a clip's vector is the mean of its captions' sentence embeddings
(mullama/knn/text_model.py), and the recipe records the text model's identity and the caption files' digests
(docs/knn.md, "Find music by words").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.records import Record

LAYERS = "layers"
ADAPTER = "adapter"
TEXT = "text"
# The default, chosen by label agreement of neighbours on the demo corpus (docs/knn.md, "Choosing the recipe").
DEFAULT_RECIPE = "all"
NAMED = ("all", "lower", "middle", "upper", "last")


@dataclass(frozen=True)
class TextModelIdentity(Record):
    """What decides a text index's vector space: the model's config and weights, and its dimension; the
    folder it was loaded from is kept to load it again, but never decides equality."""

    name: str
    config_hash: str
    weights_hash: str
    dim: int
    folder: str = ""

    def same_model(self, other: "TextModelIdentity") -> bool:
        return (self.config_hash, self.weights_hash, self.dim) == (other.config_hash, other.weights_hash, other.dim)


@dataclass(frozen=True)
class Recipe:
    """A named way to turn clips into unit vectors; `weights` has one entry per hidden state (none for text)."""

    name: str
    kind: str
    weights: tuple[float, ...]
    bias: float = 0.0
    source: str = ""  # what supplied the weights (the adapter folder and its weights' hash)
    text_model: TextModelIdentity | None = None  # text: the sentence-embedding model
    captions: tuple[dict[str, Any], ...] = field(default=())  # text: the caption files (path, sha256, captions)

    @property
    def hidden_states(self) -> int:
        return len(self.weights)

    @property
    def is_text(self) -> bool:
        return self.kind == TEXT

    def dimension(self, hidden_size: int) -> int:
        """The vector size: the text model's, or the stacks' hidden size."""
        return self.text_model.dim if self.text_model is not None else hidden_size

    def embed(self, stacks: np.ndarray) -> np.ndarray:
        """(n, L+1, H) stacks -> (n, H) float32 unit vectors."""
        if self.is_text:
            raise MullamaError("this is a text index (built from captions): query it with words (--text), or with "
                               "a stored clip id")
        stacks = np.asarray(stacks, dtype=np.float32)
        if stacks.ndim != 3 or stacks.shape[1] != self.hidden_states:
            raise MullamaError(f"recipe {self.name} takes stacks of {self.hidden_states} hidden states, got shape "
                               f"{tuple(stacks.shape)}: were they made by another encoder?")
        weights = np.asarray(self.weights, dtype=np.float32)
        if self.kind == LAYERS:
            norms = np.linalg.norm(stacks, axis=2, keepdims=True)
            stacks = stacks / np.maximum(norms, 1e-12)
        vectors = np.einsum("l,nlh->nh", weights, stacks) + np.float32(self.bias)
        return normalise(vectors)

    def same_space(self, other: "Recipe") -> bool:
        if self.is_text or other.is_text:
            return self.kind == other.kind and self.text_model is not None and other.text_model is not None \
                and self.text_model.same_model(other.text_model)
        return (self.kind, self.weights, self.bias) == (other.kind, other.weights, other.bias)

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "kind": self.kind, "weights": list(self.weights), "bias": self.bias,
                "source": self.source}
        if self.is_text:
            data.update(text_model=self.text_model.to_dict() if self.text_model else None,
                        captions=[dict(c) for c in self.captions])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        text_model = data.get("text_model")
        return cls(str(data["name"]), str(data["kind"]), tuple(float(w) for w in data["weights"]),
                   float(data.get("bias", 0.0)), str(data.get("source", "")),
                   TextModelIdentity.from_dict(text_model) if text_model else None,
                   tuple(dict(c) for c in data.get("captions", [])))


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _layer_range(hidden_states: int, low: int, high: int, text: str) -> tuple[float, ...]:
    if not 0 <= low <= high < hidden_states:
        raise MullamaError(f"recipe {text!r}: layers must lie in 0..{hidden_states - 1} (low <= high)")
    return tuple(1.0 if low <= layer <= high else 0.0 for layer in range(hidden_states))


def _named(name: str, hidden_states: int) -> tuple[float, ...]:
    """Thirds of the hidden states (the embedding output is state 0); `last` is the final layer alone."""
    third = hidden_states / 3
    bounds = {"all": (0, hidden_states - 1), "last": (hidden_states - 1, hidden_states - 1),
              "lower": (0, max(0, round(third) - 1)), "middle": (round(third), max(round(third), round(2 * third) - 1)),
              "upper": (round(2 * third), hidden_states - 1)}
    low, high = bounds[name]
    return _layer_range(hidden_states, low, min(high, hidden_states - 1), name)


def parse_recipe(text: str, encoder: EncoderIdentity) -> Recipe:
    """A recipe from its command-line name, for stacks of `encoder`."""
    states = encoder.hidden_states
    text = text.strip()
    if text in NAMED:
        return Recipe(text, LAYERS, _named(text, states))
    kind, _, value = text.partition(":")
    if kind == "layers" and value:
        low, _, high = value.partition("-")
        try:
            weights = _layer_range(states, int(low), int(high or low), text)
        except ValueError:
            raise MullamaError(f"recipe {text!r}: write layers:A-B with whole numbers, e.g. layers:6-12") from None
        return Recipe(text, LAYERS, weights)
    if kind == "weights" and value:
        try:
            weights = tuple(float(w) for w in value.split(","))
        except ValueError:
            raise MullamaError(f"recipe {text!r}: weights must be numbers separated by commas") from None
        if len(weights) != states or not all(np.isfinite(weights)) or not any(weights):
            raise MullamaError(f"recipe {text!r}: give {states} finite weights, not all zero (one per hidden state)")
        return Recipe(text, LAYERS, weights)
    if kind == "adapter" and value:
        return adapter_recipe(value, encoder)
    raise MullamaError(f"unknown recipe {text!r}; use one of {', '.join(NAMED)}, layers:A-B, weights:w0,w1,... "
                       "or adapter:FOLDER")


def adapter_recipe(folder: str | Path, encoder: EncoderIdentity) -> Recipe:
    """The aggregator of a trained adapter folder: the feature space of its kNN mix."""
    # Here, not at the top: knn/__init__ loads this module with the CLI's configs, and model.checkpoint brings
    # torch (about 2 s of `mullama --help`; tests/test_cli.py keeps torch out of the CLI's start).
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mullama.model.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.encoder is not None and not manifest.encoder.same_encoder(encoder):
        raise MullamaError(f"adapter {folder} was trained on stacks of encoder {manifest.encoder.name}, not on this "
                           f"store's {encoder.name}; use an adapter trained on this store's encoder")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
        weight = tensors["adapter.aggregator.weight"].float().numpy().reshape(-1)
        bias = float(tensors["adapter.aggregator.bias"].float().reshape(-1)[0])
    except (FileNotFoundError, SafetensorError, OSError, KeyError) as exc:
        raise MullamaError(f"cannot read the aggregator of {folder / WEIGHTS_FILE} ({exc}); is {MANIFEST_FILE} "
                           "from a mullama adapter?") from None
    if weight.shape[0] != encoder.hidden_states:
        raise MullamaError(f"adapter {folder} aggregates {weight.shape[0]} hidden states, the store has "
                           f"{encoder.hidden_states}")
    digest = hashlib.sha256(json.dumps([weight.tolist(), bias]).encode()).hexdigest()[:16]
    return Recipe(f"adapter:{folder}", ADAPTER, tuple(float(w) for w in weight), bias,
                  source=f"{folder} (aggregator {digest})")


def text_recipe(identity: TextModelIdentity, caption_files: list[dict[str, Any]]) -> Recipe:
    """Captions -> the mean of their sentence embeddings under `identity`, normalised (docs/knn.md)."""
    return Recipe(f"text:{identity.name}", TEXT, (), source=f"{identity.folder} (weights {identity.weights_hash[:16]})",
                  text_model=identity, captions=tuple(caption_files))
