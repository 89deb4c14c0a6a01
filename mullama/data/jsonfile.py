"""Reading the JSON files users hand over, with one-line errors that name the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from mullama.errors import MullamaError
from mullama.objectstore import read_file


def read_json_list(path: str | Path, what: str) -> list[Any]:
    """The JSON list in `path` (`what` names the kind of file in messages: "MusicQA file", ...)."""
    return list(iter_json_list(path, what))


def iter_json_list(path: str | Path, what: str) -> Iterator[Any]:
    """The items of the JSON list in `path`, decoded one at a time, so that the list's whole tree never exists
    at once (a 1M-clip MusicQA file of 388 MB: json.loads peaks at 2.7 GB, this reader at 0.76 GB). What json.loads
    refuses is refused with its message, but only when reading reaches the mistake."""
    text = _text_of(path, what)
    decoder = json.JSONDecoder()
    at = _skip_space(text, 0)
    if not text.startswith("[", at):
        raise _refusal(path, text, at, valid=f"{path} is not a {what}: expected a JSON list")
    at = _skip_space(text, at + 1)
    closed = text.startswith("]", at)
    while not closed:
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError as exc:
            raise MullamaError(f"{path} is not valid JSON ({exc})") from None
        yield item
        at = _skip_space(text, at)
        closed = text.startswith("]", at)
        if not closed and not text.startswith(",", at):
            raise _refusal(path, text, at)
        at = at if closed else _skip_space(text, at + 1)
    if _skip_space(text, at + 1) != len(text):
        raise _refusal(path, text, at + 1)


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _skip_space(text: str, at: int) -> int:
    return _SPACE.match(text, at).end()


def _text_of(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise MullamaError(f"{what} {path} does not exist") from None
    except OSError as exc:  # a folder, unreadable...
        raise MullamaError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MullamaError(f"{path} is not valid JSON ({exc})") from None


def _refusal(path: str | Path, text: str, at: int, valid: str = "") -> MullamaError:
    """The error for a mistake found at `at`: json.loads's own account of it (line and column), or `valid`
    where json.loads accepts the text (valid JSON of the wrong shape)."""
    try:
        json.loads(text)
    except ValueError as exc:
        return MullamaError(f"{path} is not valid JSON ({exc})")
    return MullamaError(valid or f"{path} is not valid JSON (at character {at})")


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
