"""Reading the JSON files users hand over, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mullama.errors import MullamaError


def read_json_list(path: str | Path, what: str) -> list[Any]:
    """The JSON list in `path` (`what` names the kind of file in messages: "MusicQA file", ...)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MullamaError(f"{what} {path} does not exist") from None
    except OSError as exc:  # a folder, unreadable...
        raise MullamaError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MullamaError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise MullamaError(f"{path} is not a {what}: expected a JSON list")
    return data
