"""Lazy, read-only access to the tensors of a Hugging Face LLaMA folder, without building the model.

The importer compares the released checkpoint's frozen weights tensor by tensor, and the LLM identity
fingerprints a few tensors; neither may load 13.5 GB at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import LlamaConfig

from mullama.errors import MullamaError
from mullama.folder_config import read_folder_config


def read_raw_config(folder: str | Path) -> dict:
    folder = Path(folder)
    raw = read_folder_config(folder, "a Hugging Face LLaMA folder",
                             "create a random one with `mullama models init-llama`")
    if raw.get("model_type") != "llama":
        raise MullamaError(f"{folder}: model_type {raw.get('model_type')!r} is not a Llama-family model")
    return raw


class LlamaFiles:
    """Tensors of a LLaMA folder by Hugging Face name, read one at a time (safetensors or torch .bin)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.raw_config = read_raw_config(self.folder)
        self.config = LlamaConfig.from_pretrained(self.folder)
        self._where = self._index()

    def _index(self) -> dict[str, Path]:
        folder = self.folder
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: folder / file for name, file in weight_map.items()}
        single = folder / "model.safetensors"
        if single.is_file():
            with safe_open(str(single), framework="pt") as handle:
                return {name: single for name in handle.keys()}
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if bins:
            where = {}
            for path in bins:
                where.update({name: path for name in self._load_bin(path)})
            return where
        raise MullamaError(f"{folder} has no weights (model.safetensors, a sharded index or pytorch_model*.bin)")

    @staticmethod
    def _load_bin(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name: str) -> torch.Tensor:
        path = self._where.get(name)
        if path is None:
            raise KeyError(name)
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(name)
        return self._load_bin(path)[name]

    def head(self, name: str, rows: int) -> torch.Tensor:
        """The first `rows` rows of a tensor, reading only those from a safetensors file."""
        path = self._where.get(name)
        if path is not None and path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_slice(name)[:rows]
        return self.tensor(name)[:rows]
