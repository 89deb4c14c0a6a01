"""The HNSW family: a graph of `links` neighbours per vector, walked greedily with a queue of `efSearch`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import faiss

from mullama.knn.index_family import IndexLayout, SearchKnob, factory_index

_HEAD = re.compile(r"HNSW(\d+)(?:_(.+))?")  # HNSW32, HNSW32_SQ8 (codes written in the head), HNSW32,SQ8
EF_SEARCH_LADDER = (16, 32, 64, 128, 256, 512, 1024)
LEAST_EF_SEARCH = 16  # faiss's default


@dataclass(frozen=True)
class HnswLinks:
    links: int


@dataclass(frozen=True)
class HnswFamily:
    name: str = "HNSW"

    def read(self, parts: Sequence[str]) -> tuple[Any, str] | None:
        match = _HEAD.fullmatch(parts[0])
        if match is None or len(parts) > 2 or (len(parts) == 2 and match.group(2)):
            return None
        codes = parts[1] if len(parts) == 2 else match.group(2) or "Flat"
        return HnswLinks(int(match.group(1))), codes

    def refusal(self, layout: IndexLayout, n: int) -> str | None:
        return None

    def resident_bytes(self, layout: IndexLayout, n: int, dim: int) -> int:
        level0_links = 2 * layout.params.links * 4 * n * 1.05  # plus the few upper levels
        return int(layout.code_bytes(n, dim) + level0_links)

    def trains(self, layout: IndexLayout) -> bool:
        return layout.wrapped_trains

    def train_size(self, layout: IndexLayout, n: int) -> int:
        return layout.training_points(0, n)

    def exact(self, layout: IndexLayout) -> bool:
        return False

    def incremental(self, layout: IndexLayout) -> bool:
        return False  # a graph is built by inserting each vector; copies cannot be merged

    def knob(self, layout: IndexLayout) -> SearchKnob | None:
        return SearchKnob("ef_search", "efSearch", EF_SEARCH_LADDER)

    def search_parameters(self, layout: IndexLayout, settings: Mapping[str, Any]) -> faiss.SearchParameters | None:
        return faiss.SearchParametersHNSW(efSearch=max(LEAST_EF_SEARCH, int(settings.get("ef_search", 0))))

    def make(self, layout: IndexLayout, dim: int) -> faiss.Index:
        return factory_index(layout, dim)

    def merge(self, index: faiss.Index, part: faiss.Index) -> None:
        raise NotImplementedError("HNSW graphs cannot be merged: add the vectors instead")
