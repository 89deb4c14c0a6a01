"""What QA generation starts from: one clip's caption or tag list, and where its audio comes from.

Three kinds of source are read (docs/data-formats.md):
- a MusicCaps CSV (`ytid`, `start_s`, `end_s`, `aspect_list`, `caption`): the caption, its aspects as tags;
- a tags file, MagnaTagATune style: CSV/TSV with a `tags` column ("a, b" or "a|b") or one 0/1 column per tag
  (as `annotations_final.csv`), or JSON lines `{"clip_id" | "path", "tags": [...], "caption"?}`;
- the demo corpus (its folder or its `manifest.csv`): structured fields (instrument, style, key, meter, tempo).
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mullama.data.jsonfile import read_json_lines
from mullama.errors import MullamaError

CAPTION, TAGS = "caption", "tags"
ID_COLUMNS = ("clip_id", "id", "audio_name", "mp3_path", "path")
PATH_COLUMNS = ("path", "mp3_path")
DEMO_FIELDS = ("instrument", "style", "composer", "key", "meter", "tempo_bpm", "title")
TAG_SEPARATORS = re.compile(r"\s*[,;|]\s*")


@dataclass
class SourceClip:
    clip_id: str
    kind: str  # CAPTION or TAGS: what the LLM is given
    text: str  # the caption, or the tags joined
    tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # structured metadata (the demo corpus), for templates
    origin: dict[str, Any] = field(default_factory=dict)  # where the audio comes from: ytid and times, or a path


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MullamaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MullamaError(f"{path} is not UTF-8 text") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    rows = list(reader)
    return [name.strip() for name in reader.fieldnames or []], rows


def _aspects(value: str) -> list[str]:
    """MusicCaps' aspect_list is a Python list literal; read it as data, never as code."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = TAG_SEPARATORS.split(value.strip("[] "))
    return [str(item).strip().strip("'\"") for item in parsed if str(item).strip()] if isinstance(parsed, list) \
        else []


def read_musiccaps(path: Path, rows: list[dict[str, str]]) -> list[SourceClip]:
    clips = []
    for number, row in enumerate(rows, start=2):
        ytid = (row.get("ytid") or "").strip()
        if not ytid:
            raise MullamaError(f"{path}: line {number} has no ytid")
        tags = _aspects(row.get("aspect_list") or "")
        caption = (row.get("caption") or "").strip()
        origin = {"ytid": ytid, "start_s": _number(row.get("start_s"), path, number),
                  "end_s": _number(row.get("end_s"), path, number)}
        kind, text = (CAPTION, caption) if caption else (TAGS, ", ".join(tags))
        clips.append(SourceClip(f"{ytid}.wav", kind, text, tags, {}, origin))
    return clips


def _number(value: Any, path: Path, line: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MullamaError(f"{path}: line {line}: start_s/end_s must be numbers, got {value!r}") from None


def _clip_id(row: dict[str, Any], path: Path, line: int) -> str:
    for name in ID_COLUMNS:
        value = str(row.get(name) or "").strip()
        if value:
            return value
    raise MullamaError(f"{path}: line {line} names no clip (give one of the columns {', '.join(ID_COLUMNS)})")


def _tag_row(row: dict[str, Any], columns: list[str], path: Path, line: int) -> SourceClip:
    clip_id = _clip_id(row, path, line)
    if "tags" in row:
        raw = row["tags"]
        tags = [str(t).strip() for t in raw] if isinstance(raw, list) else TAG_SEPARATORS.split(str(raw or ""))
    else:  # one 0/1 column per tag
        tags = [name for name in columns if name not in ID_COLUMNS and str(row.get(name, "")).strip() == "1"]
    tags = [tag for tag in tags if tag]
    caption = str(row.get("caption") or "").strip()
    origin = {"path": next((str(row[name]) for name in PATH_COLUMNS if row.get(name)), "")}
    kind, text = (CAPTION, caption) if caption else (TAGS, ", ".join(tags))
    return SourceClip(clip_id, kind, text, tags, {}, origin)


def read_demo(manifest: Path, rows: list[dict[str, str]]) -> list[SourceClip]:
    clips = []
    for number, row in enumerate(rows, start=2):
        clip_id = _clip_id(row, manifest, number)
        fields = {name: str(row.get(name, "")).strip() for name in DEMO_FIELDS if str(row.get(name, "")).strip()}
        if "tempo_bpm" in fields:
            fields["tempo"] = tempo_class(float(fields["tempo_bpm"]))
        tags = [fields[name] for name in ("instrument", "style", "tempo", "key", "meter", "composer") if name in fields]
        path = str(row.get("path") or "")
        origin = {"path": str((manifest.parent / path).resolve()) if path else ""}
        clips.append(SourceClip(clip_id, TAGS, ", ".join(tags), tags, fields, origin))
    return clips


def tempo_class(bpm: float) -> str:
    """Words for a tempo, as the demo corpus's own QA uses them."""
    return "slow" if bpm < 80 else "moderate" if bpm < 120 else "fast"


def read_source(source: str | Path) -> list[SourceClip]:
    """The clips of SOURCE, in its order; ids unique."""
    path = Path(source)
    if path.is_dir():
        if not (path / "manifest.csv").is_file():
            raise MullamaError(f"{path} is a folder without manifest.csv; give a MusicCaps CSV, a tags CSV/JSONL, "
                               "or the demo corpus folder")
        path = path / "manifest.csv"
    if not path.is_file():
        raise MullamaError(f"source {path} does not exist" if not path.exists() else f"source {path} is not a file")
    if path.suffix.lower() in (".jsonl", ".json"):
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
    seen: set[str] = set()
    repeated = [clip.clip_id for clip in clips if clip.clip_id in seen or seen.add(clip.clip_id)]
    if repeated:
        raise MullamaError(f"source {path} names clip {repeated[0]!r} more than once ({len(repeated)} repeats); "
                           "clip ids must be unique")
    return clips
