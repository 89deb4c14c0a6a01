"""The IVF family: k-means lists; a query scans the codes of the `nprobe` lists nearest to it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import faiss

from mullama.knn.index_family import IndexLayout, SearchKnob, factory_index, gpus_available

_HEAD = re.compile(r"IVF(\d+)(?:_HNSW\d+)?")  # the coarse quantiser: flat, or a graph over the centroids
KMEANS_SEED = 1234


@dataclass(frozen=True)
class IvfLists:
    lists: int


@dataclass(frozen=True)
class IvfFamily:
    name: str = "IVF"

    def read(self, parts: Sequence[str]) -> tuple[Any, str] | None:
        if len(parts) == 2 and (match := _HEAD.fullmatch(parts[0])):
            return IvfLists(int(match.group(1))), parts[1]
        return None

    def refusal(self, layout: IndexLayout, n: int) -> str | None:
        lists = layout.params.lists
        return f"{lists} lists for {n} vectors; use at most {max(1, n // 39)} lists" if lists > n else None

    def resident_bytes(self, layout: IndexLayout, n: int, dim: int) -> int:
        ids_and_centroids = 8 * n + 4 * (layout.coded_dim or dim) * layout.params.lists
        return int(layout.code_bytes(n, dim) + ids_and_centroids)

    def trains(self, layout: IndexLayout) -> bool:
        return True  # the lists' centroids

    def train_size(self, layout: IndexLayout, n: int) -> int:
        return layout.training_points(layout.params.lists, n)

    def exact(self, layout: IndexLayout) -> bool:
        return False

    def incremental(self, layout: IndexLayout) -> bool:
        return True

    def knob(self, layout: IndexLayout) -> SearchKnob | None:
        lists = layout.params.lists
        powers = tuple(2 ** i for i in range(int(math.log2(lists)) + 1))
        return SearchKnob("nprobe", "nprobe", powers + ((lists,) if lists & (lists - 1) else ()))

    def search_parameters(self, layout: IndexLayout, settings: Mapping[str, Any]) -> faiss.SearchParameters | None:
        return faiss.SearchParametersIVF(nprobe=max(1, int(settings.get("nprobe", 1))))

    def make(self, layout: IndexLayout, dim: int) -> faiss.Index:
        index = factory_index(layout, dim)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = KMEANS_SEED  # faiss's IVF k-means: 10 iterations, spherical for inner product; seeded here
        if gpus_available():  # faiss-gpu (the `gpu` extra): k-means assignment on every GPU
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))
        return index

    def merge(self, index: faiss.Index, part: faiss.Index) -> None:
        index.merge_from(part, index.ntotal)  # the part's ids count from 0: shift them after ours
