"""MuMu-LLaMA's output side (docs/generation.md): output tokens after the request, and a small Transformer that
maps their final hidden states into a music decoder's conditioning space.

The output tokens are trained embeddings appended to the prompt (the frozen LLaMA's vocabulary is untouched).
Their final hidden states, plus the tokens themselves, go through a linear map to the conditioning width and
an encoder-decoder Transformer whose `length` learned queries become the conditioning rows. The rows are
trained against `scale` times the decoder's own text-encoder output of the target caption, and divided by
`scale` before the decoder sees them (the released model's choice: it keeps the regression targets near unit
size for a T5 whose outputs are small).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mullama.errors import MullamaError
from mullama.records import Record

OUTPUT_TOKENS = 8  # MuMu-LLaMA / M2UGen: [AUD0] .. [AUD7]
CONDITIONING_LENGTH = 128  # MusicGen's T5 conditioning rows (captions padded to 128 tokens)
TARGET_SCALE = 10.0
PROJECTOR_LAYERS = 4  # encoder and decoder layers of the projector Transformer, as released
PROJECTOR_HEADS = 4


@dataclass(frozen=True)
class OutputConfig(Record):
    d_model: int  # the LLM's width
    width: int  # the conditioning width (T5-base: 768)
    tokens: int = OUTPUT_TOKENS
    length: int = CONDITIONING_LENGTH
    layers: int = PROJECTOR_LAYERS
    heads: int = PROJECTOR_HEADS
    scale: float = TARGET_SCALE

    def __post_init__(self) -> None:
        for name in ("d_model", "width", "tokens", "length", "layers", "heads"):
            if getattr(self, name) < 1:
                raise MullamaError(f"output config: {name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise MullamaError(f"output config: {self.heads} heads do not divide the conditioning width {self.width}")
        if not self.scale > 0:
            raise MullamaError(f"output config: scale must be positive, got {self.scale}")


def heads_for(width: int, wanted: int = PROJECTOR_HEADS) -> int:
    """The largest head count up to `wanted` that divides `width` (a tiny test width may not take 4)."""
    return next(h for h in range(min(wanted, width), 0, -1) if width % h == 0)


class OutputHead(nn.Module):
    """Output token embeddings and the projector: (B, tokens, d_model) hidden states -> (B, length, width)."""

    def __init__(self, config: OutputConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Parameter(torch.randn(config.tokens, config.d_model) * 0.02)
        self.into = nn.Linear(config.d_model, config.width)
        self.transformer = nn.Transformer(d_model=config.width, nhead=config.heads, num_encoder_layers=config.layers,
                                          num_decoder_layers=config.layers, dim_feedforward=4 * config.width,
                                          dropout=0.0, batch_first=True)
        self.queries = nn.Parameter(torch.randn(config.length, config.width) * 0.02)
        self.out = nn.Linear(config.width, config.width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the output tokens -> conditioning rows in target units (times `scale`)."""
        x = self.into((hidden + self.tokens.to(hidden.dtype)).to(self.into.weight.dtype))
        queries = self.queries[None].expand(x.shape[0], -1, -1)
        return self.out(self.transformer(x, queries))
