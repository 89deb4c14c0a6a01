"""The trainable music adapter (docs/adapter.md): layer stack -> one music token -> a prompt per adapted layer."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mullama.errors import MullamaError
from mullama.model.settings import AdapterConfig


class RMSNorm(nn.Module):
    """Weight-only RMS normalisation, computed in float32 whatever the parameter dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class BridgeBlock(nn.Module):
    """Pre-norm SwiGLU residual block: x + W2(silu(W1 n) * W3 n), n = RMSNorm(x)."""

    def __init__(self, size: int, expansion: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(size, eps)
        self.w1 = nn.Linear(size, expansion * size, bias=False)
        self.w2 = nn.Linear(expansion * size, size, bias=False)
        self.w3 = nn.Linear(size, expansion * size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.w2(F.silu(self.w1(n)) * self.w3(n))


class MusicAdapter(nn.Module):
    """Aggregator, L2 norm, projection, bridge, prefix table and the per-head zero-initialised gates.

    The gates live here, not in LLaMA's attention modules, so the whole stage-1 trainable set is one module.
    """

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.aggregator = nn.Conv1d(config.hidden_states, 1, kernel_size=1, bias=True)
        self.projection = nn.Linear(config.encoder_hidden_size, d, bias=True)
        self.bridge = nn.ModuleList(
            BridgeBlock(d, config.bridge_expansion, config.bridge_norm_eps) for _ in range(config.bridge_blocks))
        self.prefix = nn.Embedding(config.adapted_layers * config.query_len, d)
        self.gates = nn.Parameter(torch.zeros(config.adapted_layers, config.num_heads))
        self.reset_aggregator()

    def reset_aggregator(self) -> None:
        """Start the aggregator as the plain mean of the layers (weights 1/(L+1), zero bias).

        PyTorch's default Conv1d init (the published code's) draws weights of both signs and a bias of
        the layers' own magnitude: hidden states of neighbouring layers are nearly equal, so the signed
        sum can cancel and the bias dominate, and after L2 normalisation every clip then gets almost
        the same feature (cosine 0.998 across a corpus, seen with small encoders) and training stalls.
        The mean keeps each clip's information from the first step. Imported weights overwrite it.
        """
        with torch.no_grad():
            self.aggregator.weight.fill_(1.0 / self.config.hidden_states)
            self.aggregator.bias.zero_()

    def feature(self, stacks: torch.Tensor) -> torch.Tensor:
        """(B, L+1, H) layer stacks -> (B, H) aggregated, L2-normalised music feature (the kNN space, docs/knn.md)."""
        expected = (self.config.hidden_states, self.config.encoder_hidden_size)
        if stacks.ndim != 3 or tuple(stacks.shape[1:]) != expected:
            raise MullamaError(f"layer stacks must have shape (batch, {expected[0]}, {expected[1]}) for this adapter, "
                               f"got {tuple(stacks.shape)}: were they extracted with another encoder?")
        weight = self.aggregator.weight
        aggregated = self.aggregator(stacks.to(device=weight.device, dtype=weight.dtype)).squeeze(1)
        return F.normalize(aggregated, dim=-1)

    def music_token(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, H) music feature -> (B, d_model) music token."""
        x = self.projection(feature.to(self.projection.weight.dtype))
        for block in self.bridge:
            x = block(x)
        return x

    def prompts(self, stacks: torch.Tensor | None = None, feature: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, Q, d_model): prompt of adapted layer i = music token + prefix rows [i*Q, (i+1)*Q)."""
        if (stacks is None) == (feature is None):
            raise ValueError("give exactly one of stacks or feature")
        token = self.music_token(self.feature(stacks) if feature is None else feature)
        config = self.config
        table = self.prefix.weight.view(config.adapted_layers, config.query_len, config.d_model)
        return token[:, None, None, :] + table[None]


class ModalityAdapters(nn.Module):
    """MuMu-LLaMA's layout (docs/vision.md): one MusicAdapter per input modality, each with its own aggregator,
    projection, bridge, prefix rows and gates, and its own consecutive block of adapted layers.

    A modality missing from a call still sends its prefix rows to its block (the released model's prompt for
    an absent input), so an image question and an audio question differ only in the blocks that got a feature.
    """

    def __init__(self, config: AdapterConfig):
        super().__init__()
        if not config.branches:
            raise MullamaError("a multi-modal adapter needs at least one branch")
        self.config = config
        self.branches = nn.ModuleDict({m: MusicAdapter(config.branch_config(m)) for m in config.modalities})

    @property
    def gates(self) -> torch.Tensor:
        """(blocks x layers per block, heads): the branches' gates in layer order."""
        return torch.cat([self.branches[m].gates for m in self.config.modalities])

    def prompts(self, stacks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{modality: (B, T, H)} -> (B, N, Q, d_model) for every adapted layer; at least one modality given."""
        unknown = sorted(set(stacks) - set(self.config.modalities))
        if unknown:
            raise MullamaError(f"this adapter has no {', '.join(unknown)} branch (it takes "
                               f"{', '.join(self.config.modalities)})")
        batches = {m: s.shape[0] for m, s in stacks.items()}
        if not batches or len(set(batches.values())) != 1:
            raise MullamaError(f"give every modality the same batch of items, got {batches or 'none'}")
        batch = next(iter(batches.values()))
        parts = []
        for modality in self.config.modalities:
            branch = self.branches[modality]
            if modality in stacks:
                parts.append(branch.prompts(stacks[modality]))
            else:
                table = branch.prefix.weight.view(branch.config.adapted_layers, branch.config.query_len, -1)
                parts.append(table[None].expand(batch, -1, -1, -1))
        return torch.cat(parts, dim=1)


def build_adapter(config: AdapterConfig) -> MusicAdapter | ModalityAdapters:
    """MU-LLaMA's single audio adapter, or MuMu-LLaMA's one branch per modality."""
    return ModalityAdapters(config) if config.branches else MusicAdapter(config)


def adapter_prompts(adapter: MusicAdapter | ModalityAdapters,
                    stacks: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Prompts from a batch of stacks (a single-branch adapter) or from {modality: stacks}."""
    if isinstance(adapter, ModalityAdapters):
        return adapter.prompts(stacks if isinstance(stacks, Mapping) else {adapter.config.modalities[0]: stacks})
    if isinstance(stacks, Mapping):
        if set(stacks) != {"audio"}:
            raise MullamaError(f"this adapter takes audio only, not {', '.join(sorted(set(stacks) - {'audio'}))}")
        stacks = stacks["audio"]
    return adapter.prompts(stacks)
