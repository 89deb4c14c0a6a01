"""Caption files of a text index: the JSON lines `mullama caption` writes (clip_id, caption, ...), read and
digested so that the index records exactly which captions it embeds and an update sees which changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mullama.errors import MullamaError


@dataclass
class CaptionSet:
    """Every clip's captions, in file order without repeats, and the files they came from."""

    by_clip: dict[str, list[str]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # path, sha256, captions

    def texts(self, clip_id: str) -> list[str]:
        return self.by_clip.get(clip_id, [])


def _file_lines(path: Path) -> tuple[bytes, list[tuple[str, str]]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MullamaError(f"--captions {path} does not exist; give the JSON lines file `mullama caption` "
                           "wrote") from None
    except OSError as exc:
        raise MullamaError(f"--captions {path}: cannot read it ({exc.strerror or exc})") from None
    pairs = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            clip_id, caption = row["clip_id"], row["caption"]
        except (ValueError, KeyError, TypeError):
            raise MullamaError(f"--captions {path} line {number} is not a JSON object with clip_id and caption; "
                               "give the file `mullama caption` wrote") from None
        if not isinstance(clip_id, str) or not isinstance(caption, str):
            raise MullamaError(f"--captions {path} line {number}: clip_id and caption must be strings")
        if caption.strip():
            pairs.append((clip_id, caption.strip()))
    return data, pairs


def read_captions(paths: list[str]) -> CaptionSet:
    """The captions of `paths`, in order (a path given twice is read once)."""
    captions = CaptionSet()
    for path in dict.fromkeys(str(Path(p).resolve()) for p in paths):
        data, pairs = _file_lines(Path(path))
        for clip_id, caption in pairs:
            texts = captions.by_clip.setdefault(clip_id, [])
            if caption not in texts:
                texts.append(caption)
        captions.files.append({"path": path, "sha256": hashlib.sha256(data).hexdigest(), "captions": len(pairs)})
    return captions
