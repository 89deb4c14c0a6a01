"""Reading the JSON files users hand over, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mullama.errors import MullamaError
from mullama.objectstore import read_file


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


def read_json_lines(path: str | Path, hint: str) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (a local path or an object-store URL), blank lines skipped; `hint`
    ends the error for a line that is not a JSON object (what to do about it)."""
    rows = []
    try:
        lines = read_file(str(path)).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MullamaError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise MullamaError(f"{path}: line {number} is not a JSON object ({hint})")
        rows.append(row)
    return rows
