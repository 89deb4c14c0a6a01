"""Training targets of MuMu-LLaMA's generator (docs/generation.md): a music decoder's conditioning of each target
caption, computed once and stored, the way MERT stacks are, so generator training never runs T5.

    TARGETS/
      targets.json     written last: the space, length, width, texts digest, one checksum per chunk
      texts.json       the captions, in row order
      progress.json    while writing: the chunks done (a resumed run skips them)
      rows/            zarr array (captions, length, width) float16, CHUNK_ROWS captions per chunk

A chunk is written whole, then checksummed and recorded; targets.json names every chunk and goes last, so a
folder with targets.json is complete and a killed run resumes at its first unrecorded chunk.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zarr
from tqdm import tqdm

from mullama.durable import owned_folder, write_atomic
from mullama.errors import MullamaError

MANIFEST = "targets.json"
TEXTS = "texts.json"
PROGRESS = "progress.json"
ROWS = "rows"
FORMAT = "mullama-conditioning-targets"
# 16 captions x 128 x 768 float16 is 3 MiB a chunk: a training batch reads a few chunks, and T5-base on a CPU
# encodes one chunk in a few seconds, so a kill loses little.
CHUNK_ROWS = 16


def texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def _checksum(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()


@dataclass
class TargetsReport:
    folder: Path
    captions: int
    computed: int  # captions encoded by this run (the rest were already stored)
    seconds: float = 0.0
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = f" in {self.seconds:.1f} s" if self.computed else ""
        return [f"conditioning targets: {self.captions} captions in {self.folder} ({self.computed} encoded now"
                f"{rate}, {self.captions - self.computed} already stored)", *self.notes]


class ConditioningTargets:
    """A complete targets folder: captions -> (length, width) conditioning rows."""

    def __init__(self, folder: Path, manifest: dict[str, Any], texts: list[str]):
        self.folder = folder
        self.manifest = manifest
        self.texts = texts
        self.index = {text: number for number, text in enumerate(texts)}
        self._rows = zarr.open_array(store=zarr.storage.LocalStore(folder, read_only=True), path=ROWS, mode="r")

    @classmethod
    def open(cls, folder: str | Path) -> "ConditioningTargets":
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            more = " (an unfinished run: compute them again to resume)" if (folder / PROGRESS).is_file() else ""
            raise MullamaError(f"{folder} holds no complete conditioning targets: {MANIFEST} is missing{more}")
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            texts = json.loads((folder / TEXTS).read_text())
        except (OSError, ValueError) as exc:
            raise MullamaError(f"conditioning targets in {folder} are unreadable ({exc}); compute them again") from None
        if manifest.get("format") != FORMAT or texts_digest(texts) != manifest.get("texts_digest"):
            raise MullamaError(f"conditioning targets in {folder}: {TEXTS} does not match {MANIFEST}; compute them "
                               "again")
        return cls(folder, manifest, texts)

    @property
    def space(self) -> dict[str, Any]:
        return self.manifest["space"]

    @property
    def length(self) -> int:
        return int(self.manifest["length"])

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, numbers: Sequence[int]) -> np.ndarray:
        """(len(numbers), length, width) float32 rows of those captions."""
        order = np.asarray(numbers, dtype=np.int64)
        return self._rows.get_orthogonal_selection((order, slice(None), slice(None))).astype(np.float32)

    def verify(self) -> list[int]:
        """Chunks whose stored rows no longer match their checksum."""
        bad = []
        for chunk, expected in enumerate(self.manifest["chunks"]):
            start = chunk * CHUNK_ROWS
            if _checksum(self._rows[start:start + CHUNK_ROWS]) != expected:
                bad.append(chunk)
        return bad


def write_targets(folder: str | Path, texts: Sequence[str], space: dict[str, Any], length: int, width: int,
                  encode: Callable[[list[str]], np.ndarray], progress: bool = True) -> TargetsReport:
    """Encode every text (unique, in the given order) a chunk at a time with `encode` (texts -> (n, length, width))
    into `folder`; resumes a killed run with the same texts and space, and refuses a folder made otherwise."""
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise MullamaError("no captions to encode")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MullamaError(f"--out {folder} is a file; give a folder for the conditioning targets")
    identity = {"format": FORMAT, "space": space, "length": length, "width": width, "chunk_rows": CHUNK_ROWS,
                "texts_digest": texts_digest(texts), "captions": len(texts)}
    with owned_folder(folder, ".lock", "conditioning targets folder",
                      f"another process is writing conditioning targets in {folder}; wait for it to finish"):
        if (folder / MANIFEST).is_file():
            done = json.loads((folder / MANIFEST).read_text())
            if {k: done.get(k) for k in identity} != identity:
                raise MullamaError(f"{folder} already holds conditioning targets of other captions or another text "
                                   "encoder; choose another --out")
            return TargetsReport(folder, len(texts), 0)
        store = zarr.storage.LocalStore(folder)
        state = json.loads((folder / PROGRESS).read_text()) if (folder / PROGRESS).is_file() else None
        if state is None or state.get("identity") != identity:
            if state is not None or (folder / ROWS).exists():
                raise MullamaError(f"{folder} holds an unfinished run for other captions or another text encoder; "
                                   "choose another --out or delete it")
            write_atomic(folder / TEXTS, json.dumps(texts).encode())
            zarr.create_array(store=store, name=ROWS, shape=(len(texts), length, width), dtype="float16",
                              chunks=(CHUNK_ROWS, length, width), fill_value=0.0)
            state = {"identity": identity, "chunks": {}}
            write_atomic(folder / PROGRESS, json.dumps(state).encode())
        rows = zarr.open_array(store=store, path=ROWS, mode="r+")
        chunks = -(-len(texts) // CHUNK_ROWS)
        todo = [c for c in range(chunks) if str(c) not in state["chunks"]]
        started = time.perf_counter()
        for chunk in tqdm(todo, unit="chunk", desc="encode captions", disable=not progress, dynamic_ncols=True):
            part = texts[chunk * CHUNK_ROWS:(chunk + 1) * CHUNK_ROWS]
            values = np.asarray(encode(part), dtype=np.float32)
            if values.shape != (len(part), length, width) or not np.isfinite(values).all():
                raise MullamaError(f"the text encoder gave {values.shape} rows (or non-finite values) for "
                                   f"{len(part)} captions; expected ({len(part)}, {length}, {width})")
            stored = values.astype(np.float16)
            rows[chunk * CHUNK_ROWS:chunk * CHUNK_ROWS + len(part)] = stored
            state["chunks"][str(chunk)] = _checksum(stored)
            write_atomic(folder / PROGRESS, json.dumps(state).encode())
        manifest = {**identity, "chunks": [state["chunks"][str(c)] for c in range(chunks)]}
        write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        (folder / PROGRESS).unlink(missing_ok=True)
        return TargetsReport(folder, len(texts), sum(len(texts[c * CHUNK_ROWS:(c + 1) * CHUNK_ROWS]) for c in todo),
                             time.perf_counter() - started)
