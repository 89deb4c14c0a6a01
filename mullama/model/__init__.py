"""MU-LLaMA's model: music adapter on a frozen Hugging Face LLaMA, generation, and checkpoint import.

    from mullama.model import MusicLlama
    m = MusicLlama.load(adapter_dir, llama_dir, dtype="bf16")
    m.answer(stack, "Describe the audio")
    m.answer(stack, "Describe the audio", knn=KnnMix(index, weight=0.2))   # MU-LLaMA's neighbour mix

Names are imported on first use, so importing this package (the CLI does) costs nothing until torch is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MusicLlama": "mullama.model.music_llama",
    "MusicAdapter": "mullama.model.adapter",
    "KnnMix": "mullama.model.knn_mix",
    "MusicLlamaForCausalLM": "mullama.model.llm",
    "AdapterConfig": "mullama.model.settings",
    "GenerationSettings": "mullama.model.settings",
    "set_trainable": "mullama.model.stage2",
    "stage1_parameters": "mullama.model.stage2",
    "stage2_parameters": "mullama.model.stage2",
    "tokenize_example": "mullama.model.prompts",
    "format_prompt": "mullama.model.prompts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mullama.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
