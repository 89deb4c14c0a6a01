"""The rule every command that writes follows: an output is never one of the command's inputs, never inside an
input folder (a store: its metadata, partitions or index) and never a folder holding one; and it is written whole
or not at all (through `mullama.durable`'s `write_atomic` and `publish`).

Paths are compared after resolving links and `..` (and, when both exist, as the same file on disk), so that a
link or another spelling of an input is refused too: `--overwrite` replaces an earlier output, never an input.
Object-store URLs (s3://bucket/key) are compared with URLs, by their keys, for the commands that write to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from mullama.errors import MullamaError


def _same(a: Path, b: Path) -> bool:
    return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))


Inputs = Mapping[str, "str | Path | Sequence[str | Path]"]


def refuse_output_over_inputs(out: str | Path, inputs: Inputs, flag: str = "--out", urls: bool = False) -> None:
    """A one-line MullamaError when `out` is an input (a file or folder of `inputs`, keyed by the option naming
    it; an option may name several), lies inside an input folder, or holds one. Empty inputs are skipped. URLs
    (object-store locations) are compared with URLs when `urls` is set (the commands whose outputs may be URLs:
    caption, qa generate), and skipped otherwise (an index may live inside its store's indexes/ folder, which
    `index build` allows for local stores only so far)."""
    if not out or (_is_url(out) and not urls):
        return
    for name, value in inputs.items():
        for given in ([value] if isinstance(value, (str, Path)) else value):
            if not given or _is_url(out) != _is_url(given):
                continue
            if _is_url(out):
                _refuse_url(out, name, str(given), flag)
            else:
                _refuse(Path(out).resolve(), out, name, given, flag)


def _is_url(path: str | Path) -> bool:
    return "://" in str(path)


def _url_key(url: str) -> str:
    """A URL as compared: the scheme in lower case (s3a is s3), no trailing slash."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    return f"{'s3' if scheme == 's3a' else scheme}://{rest.rstrip('/')}"


def _refuse_url(out: str | Path, name: str, given: str, flag: str) -> None:
    target, source = _url_key(str(out)), _url_key(given)
    if target == source:
        raise MullamaError(f"{flag} {out} is the {name} {given}; write the output elsewhere")
    if target.startswith(source + "/"):
        raise MullamaError(f"{flag} {out} lies inside {name} {given}; write the output outside it")
    if source.startswith(target + "/"):
        raise MullamaError(f"{flag} {out} holds {name} {given}; write the output elsewhere")


def _refuse(target: Path, out: str | Path, name: str, given: str | Path, flag: str) -> None:
    source = Path(given).resolve()
    if _same(target, source):
        kind = "folder" if source.is_dir() else "file"
        raise MullamaError(f"{flag} {out} is the {name} {kind}; write the output elsewhere")
    if source.is_dir() and target.is_relative_to(source):
        raise MullamaError(f"{flag} {out} lies inside {name} {given}; write the output outside it")
    if source.is_relative_to(target):
        raise MullamaError(f"{flag} {out} holds {name} {given}; write the output elsewhere")
