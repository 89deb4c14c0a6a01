"""The answers file of `mullama eval generate`: JSON lines, one per (condition, QA pair), written in whole batches.

A batch's lines go out in one write followed by fsync. A run killed mid-write leaves at most a torn last line
and a partly written batch; reopening keeps only whole batches (rewriting the file atomically when it must
drop something), so a resumed run answers every pair exactly once; a repeated row is dropped the same way, the
first of each (condition, pair) kept. Rows record their settings: resuming
with other settings is refused rather than mixing two runs in one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from mullama.durable import append_lines, write_atomic
from mullama.errors import MullamaError

REQUIRED_FIELDS = ("pair", "audio_name", "question", "reference", "answer", "condition")


def row_key(row: dict[str, Any]) -> tuple[str, int]:
    return str(row["condition"]), int(row["pair"])


def _parse(line: str, path: Path, number: int) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or any(name not in row for name in REQUIRED_FIELDS):
        raise MullamaError(f"{path}: line {number} is not an answer row (it needs {', '.join(REQUIRED_FIELDS)})")
    return row


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a finished answers file; a torn line is an error naming it (a run killed mid-write)."""
    path = Path(path)
    if not path.is_file():
        raise MullamaError(f"answers file {path} does not exist" if not path.exists() else f"{path} is not a file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = _parse(line, path, number)
            if row is None:
                raise MullamaError(f"{path}: line {number} is not JSON (cut off by a killed run?); run the same "
                                   "`mullama eval generate` again to complete the file")
            rows.append(row)
    if not rows:
        raise MullamaError(f"answers file {path} holds no answers")
    return rows


class AnswerLog:
    """Append-only answers file that resumes at batch granularity (see the module docstring)."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = path
        self.settings = settings
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.repeats = 0  # rows dropped on recovery because an earlier row answered the same (condition, pair)

    def recover(self, batches: Iterable[list[tuple[str, int]]]) -> int:
        """Load earlier rows, keep those of whole batches, and return how many rows were dropped."""
        if not self.path.exists():
            return 0
        if not self.path.is_file():
            raise MullamaError(f"--out {self.path} is not a file")
        kept: dict[tuple[str, int], dict[str, Any]] = {}
        torn = False
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                row = _parse(line, self.path, number) if line.strip() else None
                if row is None:
                    torn = torn or bool(line.strip()) or not line.endswith("\n")
                    continue
                if row.get("settings") != self.settings:
                    raise MullamaError(f"{self.path} was written with other settings "
                                       f"({_difference(row, self.settings)}); give another --out, or --overwrite "
                                       "to start again")
                if row_key(row) in kept:
                    self.repeats += 1
                else:
                    kept[row_key(row)] = row
        whole = {key for batch in batches if all(key in kept for key in batch) for key in batch}
        dropped = len(kept) - len(whole & kept.keys())
        self.rows = {key: row for key, row in kept.items() if key in whole}
        if dropped or torn or self.repeats:
            write_atomic(self.path, b"".join(_line(row) for row in self.rows.values()))
        return dropped

    def done(self, batch: list[tuple[str, int]]) -> bool:
        return all(key in self.rows for key in batch)

    def append(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row["settings"] = self.settings
        append_lines(self.path, b"".join(_line(row) for row in rows), "answers")
        for row in rows:
            self.rows[row_key(row)] = row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows.values())


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def _difference(row: dict[str, Any], settings: dict[str, Any]) -> str:
    old = row.get("settings") or {}
    names = [name for name in sorted(set(old) | set(settings)) if old.get(name) != settings.get(name)]
    return ", ".join(f"{name}: {old.get(name)!r} then, {settings.get(name)!r} now" for name in names[:3]) or "none"
