"""Where models run: device and dtype choice, and transformers kept quiet while loading.

Encoders, the LLM and training all choose devices and dtypes the same way, so one spelling of an
option means the same thing in every command. No model folder's own Python code is ever run: a folder
that needs it is refused before anything loads (`refuse_remote_code`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from mullama.errors import MullamaError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """auto: the first CUDA device if there is one, else the CPU; an absent CUDA device is a user mistake."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise MullamaError(f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise MullamaError(f"device {device} asked for, but no CUDA device is available; use cpu")
    return chosen


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, allowed: tuple[str, ...] = tuple(DTYPES),
                  option: str = "dtype") -> torch.dtype:
    """auto: bf16 on CUDA, fp32 on CPU (where bf16 matmuls are often slow; ask for bf16 to halve memory)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in allowed:
        raise MullamaError(f"{option} {dtype!r} is not one of auto, {', '.join(allowed)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Errors only, no progress bars, while transformers loads: its expected warnings (a MERT folder's
    model type, a random LLaMA's generation config) would read as problems to a user."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _json_object(path: Path, option: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MullamaError(f"{option} {path.parent}: {path.name} is unreadable ({exc}); give a Hugging Face model "
                           "folder") from None
    if not isinstance(data, dict):
        raise MullamaError(f"{option} {path.parent}: {path.name} is not a JSON object; give a Hugging Face model "
                           "folder")
    return data


def refuse_remote_code(folder: str | Path, option: str) -> dict[str, Any]:
    """The folder's config.json, once sure that loading the folder runs none of its own Python: transformers
    would ask "run the custom code? [y/N]" (or run it) for an `auto_map` or a model type it does not know."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise MullamaError(f"{option} {folder} is not a Hugging Face model folder (no config.json)")
    config = _json_object(path / "config.json", option)
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        settings = config if name == "config.json" else \
            _json_object(path / name, option) if (path / name).is_file() else {}
        if "auto_map" in settings:
            raise MullamaError(f"{option} {folder}: its {name} has an auto_map, which asks to run the folder's own "
                               "Python code; mullama never runs a model folder's code: give a model transformers "
                               "supports natively")
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise MullamaError(f"{option} {folder}: model type {model_type!r} is not one transformers "
                           "knows, and mullama never runs a model folder's own code; give a model transformers "
                           "supports natively")
    return config
