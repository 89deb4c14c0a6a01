"""Generation pairs (docs/generation.md): what a user asks for, and the caption of the music that answers it.

A JSON list of objects:
    {"request": "Compose a calm piano piece", "caption": "A slow, calm piano solo in C major."}
    {"request": "Play this on a violin", "caption": "A slow violin solo in C major.", "clip_id": "track_0001.wav"}
The second form is an edit: the request is about a stored clip, and the caption describes the music it should
become. M2UGen's MUCaps and MUEdit sets come to this form by renaming their fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from mullama.data.jsonfile import read_json_list
from mullama.durable import write_atomic

WHAT = "generation pairs file"


@dataclass(frozen=True)
class GenerationPair:
    request: str
    caption: str
    clip_id: str = ""  # an edit: the stored clip the request is about


def read_generation_pairs(path: str | Path) -> tuple[list[GenerationPair], list[str]]:
    """(the valid pairs, one reason per entry left out): a bad entry never stops training on the others."""
    pairs, skipped = [], []
    for number, entry in enumerate(read_json_list(path, WHAT)):
        if not isinstance(entry, dict):
            skipped.append(f"entry {number}: not a JSON object")
            continue
        fields = {k: entry.get(k, "") for k in ("request", "caption", "clip_id")}
        wrong = [k for k, v in fields.items() if not isinstance(v, str)]
        if wrong:
            skipped.append(f"entry {number}: {', '.join(wrong)} not text")
            continue
        if not fields["request"].strip() or not fields["caption"].strip():
            skipped.append(f"entry {number}: empty {'request' if not fields['request'].strip() else 'caption'}")
            continue
        pairs.append(GenerationPair(fields["request"].strip(), fields["caption"].strip(), fields["clip_id"].strip()))
    return pairs, skipped


def write_generation_pairs(path: str | Path, pairs: Iterable[GenerationPair]) -> None:
    rows = [{k: v for k, v in asdict(p).items() if v} for p in pairs]
    write_atomic(path, json.dumps(rows, indent=1).encode())
