"""The Flat family: every stored code is scored for every query (`Flat`: exact float32; `SQ8`, `PQ16`...:
compressed codes scanned one by one, then re-ranked)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import faiss

from mullama.knn.index_family import IndexLayout, SearchKnob, factory_index, is_codes


@dataclass(frozen=True)
class FlatFamily:
    name: str = "Flat"

    def read(self, parts: Sequence[str]) -> tuple[Any, str] | None:
        return (None, parts[0]) if len(parts) == 1 and is_codes(parts[0]) else None  # the codes alone

    def refusal(self, layout: IndexLayout, n: int) -> str | None:
        return None

    def resident_bytes(self, layout: IndexLayout, n: int, dim: int) -> int:
        return int(layout.code_bytes(n, dim))

    def trains(self, layout: IndexLayout) -> bool:
        return layout.wrapped_trains

    def train_size(self, layout: IndexLayout, n: int) -> int:
        return layout.training_points(0, n)

    def exact(self, layout: IndexLayout) -> bool:
        return layout.codes.exact and not layout.transforms

    def incremental(self, layout: IndexLayout) -> bool:
        return True

    def knob(self, layout: IndexLayout) -> SearchKnob | None:
        return None

    def search_parameters(self, layout: IndexLayout, settings: Mapping[str, Any]) -> faiss.SearchParameters | None:
        return None

    def make(self, layout: IndexLayout, dim: int) -> faiss.Index:
        return factory_index(layout, dim)

    def merge(self, index: faiss.Index, part: faiss.Index) -> None:
        index.merge_from(part, 0)  # flat codes number their rows themselves
