"""A model folder's config.json, read once the same way for every kind of model (LLaMA, MusicGen, encoders).

Light on purpose (json and pathlib only): config checks run before any weights or heavy library load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mullama.errors import MullamaError

CONFIG_FILE = "config.json"


def read_folder_config(folder: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """The folder's config.json, or one line saying the folder is not `what` (with `hint`: how to make one)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise MullamaError(f"{folder} is not {what}: {CONFIG_FILE} is missing" + (f" ({hint})" if hint else ""))
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise MullamaError(f"{path} is not valid JSON ({exc})") from None
