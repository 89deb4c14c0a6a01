"""`mullama qa split`: MusicQA files for pre-training, fine-tuning and evaluation, split by clip.

As MusicQA was used: the four description pairs of training clips pre-train (stage 1), their five open
pairs fine-tune (stage 2), and held-out clips give the evaluation file (all nine pairs). No clip is in two
splits; the split depends only on the clip ids and the seed. mapping.csv leads every audio_name back to its
source (ytid and times, or a path), which the published files lost; manifest.csv is what `mullama extract`
reads.

Rows that cannot be split are skipped with their reason (exit 1) while the others go on: a repeated clip id
(the first row wins; a repeat would count the clip's pairs twice), or an id that would become a manifest path
outside --audio-root (or the manifest's folder).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mullama.config import validate
from mullama.data.jsonfile import read_json_lines
from mullama.data.manifest import leaves_root
from mullama.data.musicqa import QAPair
from mullama.data.qagen.config import QaSplitConfig
from mullama.data.qagen.qa_pairs import QA_FILE
from mullama.durable import write_atomic
from mullama.errors import MullamaError
from mullama.outputs import refuse_output_over_inputs

FILES = {"pretrain": "MusicQA_pretrain.json", "finetune": "MusicQA_finetune.json", "eval": "MusicQA_eval.json"}
MAPPING, MANIFEST = "mapping.csv", "manifest.csv"


@dataclass
class QaSplitReport:
    counts: dict[str, int] = field(default_factory=dict)
    clips: dict[str, int] = field(default_factory=dict)
    out: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip id, why)

    @property
    def exit_code(self) -> int:
        return 1 if self.skipped else 0

    def lines(self) -> list[str]:
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        lines = [f"qa split: {self.clips.get('train', 0)} training clips, {self.clips.get('eval', 0)} held out"
                 f"{skipped} -> {self.out}"]
        lines += [f"  {FILES[name]}: {count} pairs" for name, count in self.counts.items()]
        lines += [f"  skipped {clip_id!r}: {why}" for clip_id, why in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more skipped")
        return lines


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        path = path / QA_FILE
    if not path.is_file():
        raise MullamaError(f"{path} does not exist; run `mullama qa generate` first")
    repair = "cut off by a killed run? run the same `mullama qa generate` again to repair it"
    rows = read_json_lines(path, repair)
    for number, row in enumerate(rows, start=1):
        if not (isinstance(row.get("clip_id"), str) and isinstance(row.get("description"), list)
                and isinstance(row.get("open"), list)):
            raise MullamaError(f"{path}: row {number} is not a QA row ({repair})")
    if not rows:
        raise MullamaError(f"{path} holds no clips")
    return rows


def _usable(rows: list[dict[str, Any]], root: Path | None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(the rows to split, (clip id, why) of those skipped): see the module docstring."""
    first: dict[str, int] = {}
    kept, skipped = [], []
    for number, row in enumerate(rows, start=1):
        clip_id = row["clip_id"]
        if (root is not None or not (row.get("source") or {}).get("path")) and leaves_root(clip_id):
            where = f"--audio-root {root}" if root is not None else "the manifest's folder"
            skipped.append((clip_id, f"names no file below {where}"))
        elif clip_id in first:
            skipped.append((clip_id, f"repeats row {first[clip_id]} (the first is kept)"))
        else:
            first[clip_id] = number
            kept.append(row)
    return kept, skipped


def _items(pairs: list[QAPair]) -> bytes:
    return json.dumps([{"audio_name": p.audio_name, "conversation": [{"from": "human", "value": p.question},
                                                                      {"from": "gpt", "value": p.answer}]}
                       for p in pairs], indent=1, ensure_ascii=False).encode()


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def run_qa_split(config: QaSplitConfig) -> QaSplitReport:
    validate(config)
    refuse_output_over_inputs(config.out, {"QA": config.qa})
    root = Path(config.audio_root) if config.audio_root else None
    rows, skipped = _usable(_read_rows(Path(config.qa)), root)
    if not rows:
        raise MullamaError(f"{config.qa}: no clip can be split (first: {skipped[0][0]!r} {skipped[0][1]})")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MullamaError(f"--out {out} is a file; give a folder")
    existing = [name for name in [*FILES.values(), MAPPING, MANIFEST] if (out / name).exists()]
    if existing and not config.overwrite:
        raise MullamaError(f"{out} already holds {existing[0]}; give another --out, or --overwrite")
    ids = sorted(row["clip_id"] for row in rows)
    held = set(random.Random(config.seed).sample(ids, round(len(ids) * config.eval_fraction)))
    if config.eval_fraction > 0 and not held:
        raise MullamaError(f"--eval-fraction {config.eval_fraction} of {len(ids)} clips holds out none; raise it")
    if len(held) == len(ids):
        raise MullamaError(f"--eval-fraction {config.eval_fraction} leaves no clip to train on")
    files: dict[str, list[QAPair]] = {name: [] for name in FILES}
    mapping, manifest = [], []
    for row in sorted(rows, key=lambda r: r["clip_id"]):
        clip_id, split = row["clip_id"], "eval" if row["clip_id"] in held else "train"
        pairs = {kind: [QAPair(clip_id, p["question"], p["answer"]) for p in row[kind]]
                 for kind in ("description", "open")}
        if split == "eval":
            files["eval"] += pairs["description"] + pairs["open"]
        else:
            files["pretrain"] += pairs["description"]
            files["finetune"] += pairs["open"]
        source = row.get("source") or {}
        mapping.append({"audio_name": clip_id, "split": split, "kind": row.get("kind", ""), **source})
        path = str(root / clip_id) if root is not None else source.get("path") or clip_id
        manifest.append({"clip_id": clip_id, "path": path})
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in files.items():
        write_atomic(out / FILES[name], _items(pairs))
    write_atomic(out / MAPPING, _csv(mapping, ["audio_name", "split", "kind", "ytid", "start_s", "end_s", "path"]))
    write_atomic(out / MANIFEST, _csv(manifest, ["clip_id", "path"]))
    return QaSplitReport({name: len(pairs) for name, pairs in files.items()},
                         {"train": len(ids) - len(held), "eval": len(held)}, str(out), skipped)
