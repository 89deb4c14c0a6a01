"""What QA generation starts from: one clip's caption or tag list, and where its audio comes from.

Three kinds of source are read (docs/data-formats.md):
- a MusicCaps CSV (`ytid`, `start_s`, `end_s`, `aspect_list`, `caption`): the caption, its aspects as tags;
- a tags file, MagnaTagATune style: CSV/TSV with a `tags` column ("a, b" or "a|b") or one 0/1 column per tag
  (as `annotations_final.csv`), or JSON lines `{"clip_id" | "path", "tags": [...], "caption"?}`;
- the demo corpus (its folder or its `manifest.csv`): structured fields (instrument, style, key, meter, tempo).

A row whose cell cannot be used (times that are not finite, ordered, non-negative seconds; a tempo in words; a
cell longer than MAX_CELL; nothing to make pairs from) gives a clip with its `problem`: recorded as failed by
`qa generate`, while the other clips go on. A file that cannot be read at all is one error line.
"""

from __future__ import annotations

import ast
import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mullama.data.jsonfile import read_json_lines
from mullama.data.manifest import is_url
from mullama.errors import MullamaError
from mullama.objectstore import ObjectFolder, read_file

CAPTION, TAGS = "caption", "tags"
ID_COLUMNS = ("clip_id", "id", "audio_name", "mp3_path", "path")
PATH_COLUMNS = ("path", "mp3_path")
DEMO_FIELDS = ("instrument", "style", "composer", "key", "meter", "tempo_bpm", "title")
TAG_SEPARATORS = re.compile(r"\s*[,;|]\s*")
MAX_CELL = 10_000  # characters of one caption, tag list or aspect list: far over any real one, and the prompt
TIMES = "times must be finite seconds, 0 <= start_s < end_s"


@dataclass
class SourceClip:
    clip_id: str
    kind: str  # CAPTION or TAGS: what the LLM is given
    text: str  # the caption, or the tags joined
    tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # structured metadata (the demo corpus), for templates
    origin: dict[str, Any] = field(default_factory=dict)  # where the audio comes from: ytid and times, or a path
    problem: str = ""  # why the row cannot be used ("" when it can): the clip is recorded as failed, never asked


class BadCell(ValueError):
    """A cell that makes its row unusable; the message is the clip's recorded problem."""


def _guarded(clip_id: str, build: Callable[[], SourceClip]) -> SourceClip:
    try:
        return build()
    except BadCell as bad:
        return SourceClip(clip_id, TAGS, "", problem=str(bad))


def _csv_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = read_file(path).decode("utf-8-sig")
    except OSError as exc:
        raise MullamaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MullamaError(f"{path} is not UTF-8 text") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text)))  # a long cell is one clip's problem (MAX_CELL), not the file's
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise MullamaError(f"{path} is not a readable CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)
    return [name.strip() for name in reader.fieldnames or []], rows


def _cell(value: Any, name: str) -> str:
    text = str(value or "")
    if len(text) > MAX_CELL:
        raise BadCell(f"{name} has {len(text):,} characters (at most {MAX_CELL:,} are read)")
    return text.strip()


def _aspects(value: str) -> list[str]:
    """MusicCaps' aspect_list is a Python list literal; read it as data, never as code."""
    value = _cell(value, "aspect_list")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        parsed = TAG_SEPARATORS.split(value.strip("[] "))
    return [str(item).strip().strip("'\"") for item in parsed if str(item).strip()] if isinstance(parsed, list) \
        else []


def read_musiccaps(path: str, rows: list[dict[str, str]]) -> list[SourceClip]:
    clips = []
    for number, row in enumerate(rows, start=2):
        ytid = (row.get("ytid") or "").strip()
        if not ytid:
            raise MullamaError(f"{path}: line {number} has no ytid")
        clips.append(_guarded(f"{ytid}.wav", lambda: _musiccaps_clip(ytid, row)))
    return clips


def _musiccaps_clip(ytid: str, row: dict[str, str]) -> SourceClip:
    tags = _aspects(row.get("aspect_list") or "")
    caption = _cell(row.get("caption"), "caption")
    start, end = (_seconds(row.get(name), name) for name in ("start_s", "end_s"))
    if start < 0:
        raise BadCell(f"start_s {start:g} is negative; {TIMES}")
    if start >= end:
        raise BadCell(f"start_s {start:g} is not before end_s {end:g}; {TIMES}")
    kind, text = (CAPTION, caption) if caption else (TAGS, ", ".join(tags))
    return SourceClip(f"{ytid}.wav", kind, text, tags, {}, {"ytid": ytid, "start_s": start, "end_s": end})


def _seconds(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadCell(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise BadCell(f"{name} is {number}; {TIMES}")
    return number


def _clip_id(row: dict[str, Any], path: str, line: int) -> str:
    for name in ID_COLUMNS:
        value = str(row.get(name) or "").strip()
        if value:
            return value
    raise MullamaError(f"{path}: line {line} names no clip (give one of the columns {', '.join(ID_COLUMNS)})")


def _tag_row(row: dict[str, Any], columns: list[str], path: str, line: int) -> SourceClip:
    clip_id = _clip_id(row, path, line)
    return _guarded(clip_id, lambda: _tag_clip(clip_id, row, columns))


def _tag_clip(clip_id: str, row: dict[str, Any], columns: list[str]) -> SourceClip:
    if "tags" in row:
        raw = row["tags"]
        tags = [str(t).strip() for t in raw] if isinstance(raw, list) else TAG_SEPARATORS.split(_cell(raw, "tags"))
    else:  # one 0/1 column per tag
        tags = [name for name in columns if name not in ID_COLUMNS and str(row.get(name, "")).strip() == "1"]
    tags = [tag for tag in tags if tag]
    caption = _cell(row.get("caption"), "caption")
    origin = {"path": next((str(row[name]) for name in PATH_COLUMNS if row.get(name)), "")}
    kind, text = (CAPTION, caption) if caption else (TAGS, ", ".join(tags))
    return SourceClip(clip_id, kind, text, tags, {}, origin)


def read_demo(manifest: str, rows: list[dict[str, str]]) -> list[SourceClip]:
    clips = []
    for number, row in enumerate(rows, start=2):
        clip_id = _clip_id(row, manifest, number)
        clips.append(_guarded(clip_id, lambda: _demo_clip(clip_id, row, manifest)))
    return clips


def _demo_clip(clip_id: str, row: dict[str, str], manifest: str) -> SourceClip:
    fields = {name: _cell(row.get(name), name) for name in DEMO_FIELDS if str(row.get(name) or "").strip()}
    if "tempo_bpm" in fields:
        fields["tempo"] = tempo_class(_bpm(fields["tempo_bpm"]))
    tags = [fields[name] for name in ("instrument", "style", "tempo", "key", "meter", "composer") if name in fields]
    path = _cell(row.get("path"), "path")
    if "\x00" in path:
        raise BadCell("path holds a NUL byte")
    return SourceClip(clip_id, TAGS, ", ".join(tags), tags, fields, {"path": _beside(manifest, path) if path else ""})


def _beside(manifest: str, path: str) -> str:
    """A manifest's relative audio path as an absolute one: the manifest's folder, on disk or in a bucket."""
    if is_url(path):
        return path
    if is_url(manifest):
        return f"{manifest.rsplit('/', 1)[0]}/{path.lstrip('/')}"
    return str((Path(manifest).parent / path).resolve())


def _bpm(value: str) -> float:
    try:
        bpm = float(value)
    except ValueError:
        bpm = math.nan
    if not math.isfinite(bpm) or bpm <= 0:
        raise BadCell(f"tempo_bpm {value!r} is not a number of beats per minute")
    return bpm


def tempo_class(bpm: float) -> str:
    """Words for a tempo, as the demo corpus's own QA uses them."""
    return "slow" if bpm < 80 else "moderate" if bpm < 120 else "fast"


def source_file(source: str) -> str:
    """The file SOURCE names: itself, or the demo corpus folder's manifest.csv (a local path or a URL)."""
    folder = ObjectFolder(source)
    if folder.is_file():
        return source
    if not folder.exists():
        raise MullamaError(f"source {source} does not exist")
    if not folder.exists("manifest.csv"):
        raise MullamaError(f"source {source} is not a file, nor a folder with manifest.csv; give a MusicCaps CSV, a "
                           "tags CSV/JSONL, or the demo corpus folder")
    return folder.url_of("manifest.csv")


def read_source(source: str | Path) -> list[SourceClip]:
    """The clips of SOURCE (a local path or an object-store URL), in its order; ids unique."""
    path = source_file(str(source))
    if path.lower().endswith((".jsonl", ".json")):
        rows = read_json_lines(path, "write one object per line")
        clips = [_tag_row(row, [], path, number) for number, row in enumerate(rows, start=1)]
    else:
        columns, rows = _csv_rows(path)
        if {"ytid", "caption", "aspect_list"} <= set(columns):
            clips = read_musiccaps(path, rows)
        elif {"instrument", "style", "tempo_bpm"} <= set(columns):
            clips = read_demo(path, rows)
        else:
            clips = [_tag_row(row, columns, path, number) for number, row in enumerate(rows, start=2)]
    if not clips:
        raise MullamaError(f"source {path} holds no clips")
    for clip in clips:
        if not clip.problem and not clip.text:
            clip.problem = "no caption and no tags to make pairs from"
        elif not clip.problem and len(clip.text) > MAX_CELL:
            clip.problem = f"tags have {len(clip.text):,} characters (at most {MAX_CELL:,} are read)"
    seen: set[str] = set()
    repeated = [clip.clip_id for clip in clips if clip.clip_id in seen or seen.add(clip.clip_id)]
    if repeated:
        raise MullamaError(f"source {path} names clip {repeated[0]!r} more than once ({len(repeated)} repeats); "
                           "clip ids must be unique")
    return clips
