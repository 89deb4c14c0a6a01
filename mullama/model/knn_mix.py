"""MU-LLaMA's kNN cache mix (docs/knn.md): the music feature f blended with its neighbours in an index.

    sims, ids = index.search(f, k);  a = softmax(t * sims);  p = normalise(a @ vectors[ids])
    f' = normalise((1 - w) f + w p)

The index must hold vectors of the adapter's own feature space: its aggregator applied to stacks of the
same encoder, L2-normalised (a `mullama index build --recipe adapter:FOLDER` index). This module knows
indexes only through the small protocol below, so the model layer does not depend on the kNN layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from mullama.errors import MullamaError
from mullama.model.adapter import MusicAdapter

# Aggregator weights are saved in the adapter's dtype (bf16 keeps 3 significant digits) and recorded by the
# index in float32; the same adapter differs by less than this.
SAME_WEIGHTS_TOLERANCE = 1e-2


class NeighbourIndex(Protocol):
    """What the mix needs of an index (mullama.knn.ClipIndex provides it)."""

    recipe: Any  # .kind, .weights, .bias
    encoder: Any  # an EncoderIdentity

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class KnnMix:
    """The mix's settings; the published defaults (k 10, temperature 20, weight 0.5)."""

    index: NeighbourIndex
    k: int = 10
    temperature: float = 20.0
    weight: float = 0.5

    def __post_init__(self) -> None:
        if self.k < 1:
            raise MullamaError(f"kNN mix: k must be at least 1, got {self.k}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise MullamaError(f"kNN mix: temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 <= self.weight <= 1:
            raise MullamaError(f"kNN mix: weight must be between 0 and 1, got {self.weight}")


def check_feature_space(adapter: MusicAdapter, index: NeighbourIndex, encoder: Any | None) -> None:
    """Refuse an index whose vectors are not this adapter's features of this encoder's stacks."""
    recipe = index.recipe
    weight = adapter.aggregator.weight.detach().float().reshape(-1).cpu().numpy()
    bias = float(adapter.aggregator.bias.detach().float().reshape(-1)[0])
    same = (getattr(recipe, "kind", "") == "adapter" and len(recipe.weights) == weight.shape[0]
            and np.allclose(recipe.weights, weight, atol=SAME_WEIGHTS_TOLERANCE * max(1e-6, float(np.abs(weight).max())))
            and abs(recipe.bias - bias) <= SAME_WEIGHTS_TOLERANCE * max(1.0, abs(bias)))
    if not same:
        raise MullamaError(f"the kNN index holds {getattr(recipe, 'name', 'other')} vectors, not this adapter's music "
                           "features; build one with `mullama index build STORE --recipe adapter:ADAPTER_FOLDER`")
    if encoder is not None and not encoder.same_encoder(index.encoder):
        raise MullamaError(f"the kNN index was built from encoder {index.encoder.name}, the adapter's is {encoder.name}")


def mix_features(feature: torch.Tensor, mix: KnnMix) -> torch.Tensor:
    """(B, H) unit features -> (B, H) mixed unit features, in the feature's dtype and device."""
    if mix.weight == 0:
        return feature
    queries = feature.detach().float().cpu().numpy()
    scores, rows = mix.index.search_vectors(queries, mix.k)
    mixed = []
    for query, sims, found in zip(queries, scores, rows):
        valid = found >= 0
        if not valid.any():  # an empty index: nothing to mix with
            mixed.append(query)
            continue
        prototypes = mix.index.vectors(found[valid])
        weights = torch.softmax(torch.as_tensor(mix.temperature * sims[valid], dtype=torch.float32), dim=0).numpy()
        prototype = weights @ prototypes
        prototype /= max(float(np.linalg.norm(prototype)), 1e-12)
        mixed.append((1 - mix.weight) * query + mix.weight * prototype)
    out = F.normalize(torch.as_tensor(np.stack(mixed)), dim=-1)
    return out.to(device=feature.device, dtype=feature.dtype)
