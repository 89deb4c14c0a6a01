"""The rule every command that writes follows: an output is never one of the command's inputs, never inside an
input folder (a store: its metadata, partitions or index) and never a folder holding one; and it is written whole
or not at all (through `mullama.durable`'s `write_atomic` and `publish`).

Paths are compared after resolving links and `..` (and, when both exist, as the same file on disk), so that a
link or another spelling of an input is refused too: `--overwrite` replaces an earlier output, never an input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from mullama.errors import MullamaError


def _same(a: Path, b: Path) -> bool:
    return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))


def refuse_output_over_inputs(out: str | Path, inputs: Mapping[str, str | Path], flag: str = "--out") -> None:
    """A one-line MullamaError when `out` is an input (a file or folder of `inputs`, keyed by the option naming
    it), lies inside an input folder, or holds one. Empty inputs and URLs (object-store locations) are skipped."""
    target = Path(out).resolve()
    for name, given in inputs.items():
        if not given or "://" in str(given):
            continue
        source = Path(given).resolve()
        if _same(target, source):
            kind = "folder" if source.is_dir() else "file"
            raise MullamaError(f"{flag} {out} is the {name} {kind}; write the output elsewhere")
        if source.is_dir() and target.is_relative_to(source):
            raise MullamaError(f"{flag} {out} lies inside {name} {given}; write the output outside it")
        if source.is_relative_to(target):
            raise MullamaError(f"{flag} {out} holds {name} {given}; write the output elsewhere")
