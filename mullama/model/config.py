"""The `mullama import-mu-llama` config; light (no torch), so the CLI can import it at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import at_least, option, path_given


@dataclass
class ImportMuLlamaConfig:
    checkpoint: str = option(help="The released MU-LLaMA checkpoint (.pth)", argument=True, check=path_given)
    llama: str = option(help="Hugging Face LLaMA-2 folder the checkpoint was trained on", check=path_given)
    out: str = option(help="Adapter folder to write", check=path_given)
    mert: str = option("", help="MERT folder to pin as the encoder (default: pin only the 25 x 1024 stack shape)")
    query_len: int = option(1, help="Prompt vectors per adapted layer (1 in every released MU-LLaMA)",
                            check=at_least(1))
    tolerance: float = option(1e-3, help="Relative tolerance when comparing the frozen LLaMA weights",
                               check=at_least(0))
