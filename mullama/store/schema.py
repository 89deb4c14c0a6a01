"""The store's settings and catalog records, as plain dataclasses serialised to JSON.

The encoder half of the store's identity is `mullama.encoder_identity.EncoderIdentity`, shared with
adapters and indexes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class StoreSettings:
    """How stacks were computed: part of the store's identity, fixed when the store is created."""

    window_seconds: float = 60.0
    min_window_seconds: float = 10.0
    dtype: str = "float16"
    pooling: str = "time-mean of every hidden state per window; clip = mean of its windows"
    precision: str = ""  # the encoder's compute precision (fp32, bf16); "" in stores made before it was recorded

    @property
    def windowed(self) -> bool:
        """Audio stores keep a stack per window; image and video stores (window_seconds 0) one matrix per item."""
        return self.window_seconds > 0

    def conflicts(self, other: "StoreSettings") -> list[str]:
        """Settings that differ; an unrecorded precision matches any."""
        names = ["window_seconds", "min_window_seconds", "dtype"]
        if self.precision and other.precision:
            names.append("precision")
        return [f"{name} {getattr(self, name)} (store) vs {getattr(other, name)} (asked)" for name in names
                if getattr(self, name) != getattr(other, name)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreSettings":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(slots=True)
class ClipRecord:
    """One catalog row. `row` indexes the partition's clip array; -1 for a failed clip. Slotted: a million rows
    stay in every reader's memory (benchmarks/scale.py)."""

    clip_id: str
    source: str
    content_hash: str = ""
    size: int = -1  # source file size and mtime at extraction (-1: not recorded): a cheap change check
    mtime_ns: int = -1
    duration: float = 0.0
    windows: int = 0
    window_start: int = -1
    row: int = -1
    status: str = STATUS_OK
    reason: str = ""
    partition: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], partition: str) -> "ClipRecord":
        try:  # every key a field: the common case, and half of a million-clip store's opening time without it
            return cls(**data, partition=partition)
        except TypeError:  # keys this version does not know (a newer writer's), or a stray partition key
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            fields["partition"] = partition
            return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("partition")
        return data


@dataclass
class CommitRecord:
    """Written last, atomically: its presence is what makes a partition visible."""

    partition: str
    sequence: int
    committed_at: str
    writer: str
    mullama_version: str
    clips: list[ClipRecord]
    rows: int
    window_rows: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoder: dict[str, Any] | None = None  # the writer's encoder identity (None in commits of schema-1 writers)
    settings: dict[str, Any] | None = None  # the writer's store settings, precision included

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clips"] = [c.to_dict() for c in self.clips]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CommitRecord":
        fields = dict(data)
        fields["clips"] = [ClipRecord.from_dict(c, data["partition"]) for c in data["clips"]]
        return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
