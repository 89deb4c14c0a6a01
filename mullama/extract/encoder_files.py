"""Reading an encoder folder's identity from its files: config.json and the hashes of config and weights.

Every encoder kind's spec reads its folder this way, so two folders holding the same computation get the
same identity whatever their names or paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mullama.errors import MullamaError
from mullama.folder_config import read_folder_config

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
UNHASHED_CONFIG_KEYS = ("_name_or_path", "transformers_version")


def read_config(folder: Path) -> dict[str, Any]:
    return read_folder_config(folder, "an encoder folder")


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model-*.safetensors")) or sorted(folder.glob("pytorch_model-*.bin"))
    files += [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not files:
        raise MullamaError(f"{folder} has no weights (expected model.safetensors or pytorch_model.bin)")
    return files


def hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    canonical = {k: v for k, v in config.items() if k not in UNHASHED_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
