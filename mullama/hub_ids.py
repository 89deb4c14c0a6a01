"""Which model arguments hold Hugging Face Hub ids: light (no huggingface_hub), so every command can ask."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

# Model arguments, by field name in every command: a folder or a Hugging Face Hub id, resolved to a folder before the
# command runs (mullama/hub.py). One list here rather than a marker on each config, so that a new command's --mert
# takes ids without further work; --llm also takes an endpoint URL or 'template', which never read as ids.
# File arguments that may name one file of a Hub repo, ORG/NAME[@REV]:PATH (the released MU-LLaMA checkpoint.pth).
FILE_FIELDS = frozenset({"checkpoint"})
MODEL_FIELDS = frozenset({"mert", "vit", "vivit", "llama", "musicgen", "bertscore_model", "llm", "text_model"})
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")  # ORG/NAME@REV
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})(?:/|$)")
HUB_FILE = re.compile(HUB_ID.pattern + r":(?P<path>[\w./-]+)")  # ORG/NAME@REV:PATH/IN/REPO


def is_hub_id(value: str) -> bool:
    """ORG/NAME or ORG/NAME@REVISION, and not an existing path (a folder of that name wins, as in transformers)."""
    return bool(value) and HUB_ID.fullmatch(value) is not None and not Path(value).expanduser().exists()


def hub_kind(field_name: str) -> str:
    """'model' for a model argument, 'file' for a file argument that may live in a Hub repo, else ''."""
    return "model" if field_name in MODEL_FIELDS else "file" if field_name in FILE_FIELDS else ""


def hub_ids(config: Any) -> dict[str, str]:
    """The model fields whose value is no existing path but a Hugging Face Hub id (ORG/NAME[@REV]), and the file
    fields whose value is no existing path but a file of a Hub repo (ORG/NAME[@REV]:PATH)."""
    found = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not isinstance(value, str) or not value or Path(value).expanduser().exists():
            continue
        kind = hub_kind(field.name)
        if (kind == "model" and HUB_ID.fullmatch(value)) or (kind == "file" and HUB_FILE.fullmatch(value)):
            found[field.name] = value
    return found


def hub_origin(folder: str | Path) -> tuple[str, str] | None:
    """(repo id, commit) when `folder` is a snapshot of the Hugging Face cache, else None."""
    match = _SNAPSHOT.search(Path(folder).resolve().as_posix() + "/")
    return (f"{match.group('org')}/{match.group('name')}", match.group("commit")) if match else None


def identity_origin(folder: str | Path, raw_config: dict[str, Any], folder_name: str) -> dict[str, str]:
    """The name, hub id and commit an identity records for a model folder: the config's `_name_or_path`, else the
    hub id of a cache snapshot (whose folder name is only a commit), else `folder_name`."""
    repo_id, commit = hub_origin(folder) or ("", "")
    name = raw_config.get("_name_or_path") or repo_id or folder_name
    return {"name": str(name), "hub_id": repo_id, "hub_commit": commit}
