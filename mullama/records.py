"""Frozen dataclasses written into JSON manifests (identities, conditioning spaces, configs): one way to write
them and read them back, so every record reads old files the same way."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """`to_dict` / `from_dict` for a dataclass. Reading ignores unknown keys (a newer writer may add some) and
    gives a field with a default its default when a record written before that field existed lacks it; a field
    without a default must be there (KeyError)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                      if f.name in data or _required(f)})


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
