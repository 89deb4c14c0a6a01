"""Clip sources: what to extract, from a folder, a CSV/JSONL manifest or a MusicQA JSON.

The clip id is the key users see everywhere: the manifest's `clip_id` column, else the path
relative to the folder or manifest; for MusicQA files, the `audio_name`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Collection

import fsspec

from mullama.data.musicqa import read_musicqa
from mullama.errors import MullamaError
from mullama.objectstore import named_failure, storage_options

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64"}


@dataclass(frozen=True)
class ClipSource:
    clip_id: str
    path: str
    problem: str = ""  # "reason: detail" when the input row itself is unusable; the clip is recorded as failed


def _relative_id(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def scan_folder(folder: Path, suffixes: Collection[str] = AUDIO_SUFFIXES) -> list[ClipSource]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    return [ClipSource(p.relative_to(folder).as_posix(), str(p)) for p in files]


def _rows_to_sources(rows: list[dict[str, Any]], manifest: str) -> list[ClipSource]:
    """Sources of manifest rows; a relative path lies beside the manifest (a local folder, or the manifest
    URL's prefix for a manifest in object storage)."""
    remote = is_url(manifest)
    base = manifest.rsplit("/", 1)[0] if remote else Path(manifest).parent
    sources = []
    for number, row in enumerate(rows, start=1):
        raw_path = str(row.get("path") or "").strip()
        if not raw_path:
            raise MullamaError(f"{manifest}: row {number} has no 'path' (manifests need a path column)")
        if is_url(raw_path) or remote:  # object-store audio is fetched by the workers through fsspec
            url = raw_path if is_url(raw_path) else f"{base}/{raw_path.lstrip('/')}"
            sources.append(ClipSource(str(row.get("clip_id") or "").strip() or raw_path, url))
            continue
        path = Path(raw_path) if Path(raw_path).is_absolute() else base / raw_path
        clip_id = str(row.get("clip_id") or "").strip() or _relative_id(path, base)
        sources.append(ClipSource(clip_id, str(path)))
    return sources


def is_url(path: str | Path) -> bool:
    """An object-store or web address (s3://, gs://, https://), read through fsspec rather than the disk."""
    return "://" in str(path)


def read_manifest_rows(manifest: Path) -> list[dict[str, Any]]:
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="") as handle:
            return list(csv.DictReader(handle))
    return _jsonl_rows(manifest.read_text(), str(manifest))


def _jsonl_rows(text: str, manifest: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise MullamaError(f"{manifest}: line {number} is not valid JSON") from None
            if not isinstance(row, dict):
                raise MullamaError(f"{manifest}: line {number} is a JSON {type(row).__name__}, not an object; "
                                   'write one {"clip_id": ..., "path": ...} object per line')
            rows.append(row)
    return rows


def read_remote_manifest_rows(url: str) -> list[dict[str, Any]]:
    """The rows of a .csv/.jsonl manifest in object storage (s3://bucket/clips.csv), read through fsspec as
    the workers read the audio it lists."""
    suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise MullamaError(f"input {url}: an input in object storage must be a .csv or .jsonl manifest")
    try:
        with named_failure("GET", url), fsspec.open(url, "rt", newline="", **storage_options(url)) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise MullamaError(f"input {url} does not exist; give a .csv/.jsonl manifest that is there") from None
    except (OSError, ValueError) as exc:
        raise MullamaError(f"input {url} cannot be read: {type(exc).__name__}: {exc}") from None
    return list(csv.DictReader(io.StringIO(text, newline=""))) if suffix == ".csv" else _jsonl_rows(text, url)


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV manifest with the union of the rows' keys, clip_id and path first."""
    keys = ["clip_id", "path"] + sorted({k for row in rows for k in row} - {"clip_id", "path"})
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def leaves_root(name: str) -> bool:
    """Whether NAME, joined to a root folder, fails to name a file below it on POSIX or Windows: absolute or with
    a drive letter, climbing out through `..`, naming the root itself, or holding a NUL byte. The check is on the
    path as written, so links inside the root to files stored elsewhere still work."""
    if "\x00" in name:
        return True
    path = PureWindowsPath(name)  # splits at both separators
    if path.drive or path.root:
        return True
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return depth == 0


def _musicqa_source(name: str, root: Path) -> ClipSource:
    """A MusicQA `audio_name` names a file below the audio root; one that leads elsewhere is recorded as a
    failed clip, never read: a QA file must not make extraction read any file."""
    if not leaves_root(name):
        return ClipSource(name, str(root / name))
    return ClipSource(name, str(root / name), problem=f"outside_root: audio_name {name} leaves --audio-root {root}")


def resolve_sources(input_path: str | Path, audio_root: str | Path | None = None,
                    suffixes: Collection[str] = AUDIO_SUFFIXES) -> list[ClipSource]:
    """Clip sources of INPUT (folder, .csv, .jsonl, or MusicQA .json; a .csv/.jsonl may be an object-store URL),
    ids unique, order stable; a folder is scanned for files whose suffix is among `suffixes` (audio by default,
    images or videos for those stores)."""
    shown = str(input_path) if is_url(input_path) else Path(input_path)
    if isinstance(shown, str):
        sources = _rows_to_sources(read_remote_manifest_rows(shown), shown)
    else:
        sources = _local_sources(shown, audio_root, suffixes)
    if not sources:
        raise MullamaError(f"input {shown} lists no input files (looked for {', '.join(sorted(suffixes))})")
    duplicates = [clip_id for clip_id, count in Counter(s.clip_id for s in sources).items() if count > 1]
    if duplicates:
        raise MullamaError(f"input {shown}: clip ids must be unique; repeated: {', '.join(duplicates[:5])}")
    return sources


def _local_sources(path: Path, audio_root: str | Path | None, suffixes: Collection[str]) -> list[ClipSource]:
    if not path.exists():
        raise MullamaError(f"input {path} does not exist; give a folder of audio, a .csv/.jsonl manifest "
                           "or a MusicQA .json")
    if path.is_dir():
        return scan_folder(path, suffixes)
    if path.suffix.lower() in (".csv", ".jsonl"):
        return _rows_to_sources(read_manifest_rows(path), str(path))
    if path.suffix.lower() == ".json":
        root = Path(audio_root) if audio_root else path.parent
        if not root.is_dir():
            raise MullamaError(f"--audio-root {root} is not a folder; give the folder that holds the audio of {path}")
        names = dict.fromkeys(pair.audio_name for pair in read_musicqa(path))
        return [_musicqa_source(name, root) for name in names]
    raise MullamaError(f"input {path}: unknown kind; expected a folder, .csv, .jsonl or MusicQA .json")
