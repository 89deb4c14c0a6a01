"""Index families: the ways an index finds candidates (an exhaustive scan, inverted lists, a graph), each a
small object that answers what building and searching need, so that a new family is one module plus one
registration (`mullama/knn/families/__init__.py`) and no code reads faiss factory strings but the parser.

A factory string is parsed once into an `IndexLayout`:

    [transforms,] head, codes [,refine]        e.g. OPQ16,IVF1024,PQ16   IVF512,PQ16x4fs   HNSW32,SQ8   Flat

where the head belongs to a family (the Flat family has none: its codes are scanned one by one), the codes
say how each vector is stored (float32, scalar or product codes), and a refine stage (RFlat,
Refine(SQ8), Refine(PQ256)) keeps a second, finer copy of the vectors in RAM that re-ranks the shortlist
(otherwise it is re-ranked from the float16 vectors memory-mapped beside the index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import faiss

# Training points per k-means centroid (IVF list, product-quantiser codeword): faiss warns below 39; 40 keeps
# k-means of 2,048 lists on 2 cores under a minute (benchmarks/knn_index.py), and more points did not change
# recall on the benchmark data.
TRAIN_POINTS_PER_LIST = 40
TRAIN_SAMPLE_LIMIT = 200_000  # bounds k-means time: BENCHMARKS.md, "kNN index", times it at 1M vectors
TRAIN_SAMPLE_LIMIT_GPU = 2_000_000  # with faiss-gpu: 40 vectors for each of up to 50k lists
SQ_SAMPLE = 10_000  # the least any trained index gets: scalar quantisers learn a range per dimension from it

# Scalar codes: bytes per dimension, and whether the quantiser learns ranges from a sample.
_SCALAR = {"Flat": (4.0, False), "SQfp16": (2.0, False), "SQbf16": (2.0, False), "SQ8_direct": (1.0, False),
           "SQ8": (1.0, True), "SQ6": (0.75, True), "SQ4": (0.5, True)}
_PRODUCT = re.compile(r"PQ(\d+)(?:x(\d+))?(fsr?|np)?")
_TRANSFORM = re.compile(r"OPQ\d+(?:_(\d+))?|PCAR?W?(\d+)|RR(\d+)|L2norm")
_REFINE = re.compile(r"RFlat|Refine\((.+)\)")


class UnknownLayout(ValueError):
    """A factory string no registered family reads; the message says which part."""


@dataclass(frozen=True)
class Codes:
    """How each vector is stored in RAM: float32 (`Flat`), scalar codes (`SQ8`, `SQfp16`...) or product codes
    (`PQ{m}x{bits}`, `fs`: the 4-bit SIMD fast-scan layout)."""

    text: str
    bytes_per_dim: float = 0.0  # scalar codes
    subquantizers: int = 0  # product codes
    bits: int = 0
    trains: bool = False

    @property
    def exact(self) -> bool:
        return self.text == "Flat"

    @property
    def fast_scan(self) -> bool:
        return self.subquantizers > 0 and self.text.endswith(("fs", "fsr"))

    def bytes(self, dim: int) -> float:
        if self.subquantizers:
            return self.subquantizers * self.bits // 8
        return self.bytes_per_dim * dim

    @property
    def centroids(self) -> int:
        """Codewords each product sub-quantiser learns by k-means (0 for scalar codes)."""
        return 2 ** self.bits if self.subquantizers else 0


def is_codes(text: str) -> bool:
    return text in _SCALAR or _PRODUCT.fullmatch(text) is not None


def parse_codes(text: str) -> Codes:
    if text in _SCALAR:
        per_dim, trains = _SCALAR[text]
        return Codes(text, bytes_per_dim=per_dim, trains=trains)
    if match := _PRODUCT.fullmatch(text):
        return Codes(text, subquantizers=int(match.group(1)), bits=int(match.group(2) or 8), trains=True)
    raise UnknownLayout(f"{text!r} is no code mullama knows (Flat, SQfp16, SQ8, SQ6, SQ4, PQ{{m}}[x{{bits}}][fs])")


@dataclass(frozen=True)
class SearchKnob:
    """The one search setting a family trades time for recall with, and the values tuning tries."""

    key: str  # its name in index.json's search settings: nprobe, ef_search
    label: str  # as faiss and the report name it: nprobe, efSearch
    ladder: tuple[int, ...]  # cheapest first


class IndexFamily(Protocol):
    """What build, tuning and search ask of a family; `read` claims the factory parts of its own kind."""

    name: str

    def read(self, parts: Sequence[str]) -> tuple[Any, str] | None:
        """(this family's parameters, the codes part) when `parts` (factory components between transforms
        and refine) are this family's, else None."""

    def refusal(self, layout: IndexLayout, n: int) -> str | None:
        """Why this layout cannot index n vectors (None: it can)."""

    def resident_bytes(self, layout: IndexLayout, n: int, dim: int) -> int:
        """RAM of n vectors of `dim` floats: codes, ids, lists, graph links (not the re-rank vectors)."""

    def trains(self, layout: IndexLayout) -> bool:
        """Whether the empty index must be trained on a sample before vectors are added."""

    def train_size(self, layout: IndexLayout, n: int) -> int:
        """Vectors the training sample holds for n vectors."""

    def exact(self, layout: IndexLayout) -> bool:
        """Whether a search scores every vector exactly (no shortlist, nothing to tune)."""

    def incremental(self, layout: IndexLayout) -> bool:
        """Whether vectors encoded into copies of the trained empty index can be merged into it."""

    def knob(self, layout: IndexLayout) -> SearchKnob | None:
        """The setting tuning moves (None: nothing to tune)."""

    def search_parameters(self, layout: IndexLayout, settings: Mapping[str, Any]) -> faiss.SearchParameters | None:
        """faiss's per-call settings from index.json's search settings (thread-safe, unlike index fields)."""

    def make(self, layout: IndexLayout, dim: int) -> faiss.Index:
        """The empty index."""

    def merge(self, index: faiss.Index, part: faiss.Index) -> None:
        """Append `part`'s rows (encoded in a copy of the empty `index`) after `index`'s."""


@dataclass(frozen=True)
class IndexLayout:
    """A parsed factory string: the family and its parameters, the codes, and what wraps them."""

    factory: str
    family: IndexFamily = field(compare=False)
    params: Any  # the family's own parameters (e.g. lists, graph links)
    codes: Codes
    transforms: tuple[str, ...] = ()
    coded_dim: int = 0  # dimensions after the transforms (0: the input's)
    refine: Codes | None = None

    def code_bytes(self, n: int, dim: int) -> float:
        """Bytes of the codes (and refine copies) of n vectors."""
        inner = self.codes.bytes(self.coded_dim or dim) * n
        return inner + (self.refine.bytes(dim) * n if self.refine else 0)

    @property
    def wrapped_trains(self) -> bool:
        """Whether the codes, a learnt transform or the refine codes need a training sample."""
        learnt = any(not t.startswith("L2norm") for t in self.transforms)
        return self.codes.trains or learnt or bool(self.refine and self.refine.trains)

    def training_points(self, partitions: int, n: int) -> int:
        """A bounded sample: enough points per partition (IVF list) and per product-quantiser codeword."""
        centroids = max(partitions, self.codes.centroids, self.refine.centroids if self.refine else 0)
        return min(n, train_limit(), max(TRAIN_POINTS_PER_LIST * centroids, SQ_SAMPLE))

    def wrap_parameters(self, params: faiss.SearchParameters | None,
                        shortlist: int) -> faiss.SearchParameters | None:
        """`params` for the family's index, passed through a refine stage (transforms pass them on), which
        re-ranks `shortlist` times the neighbours asked from its finer codes in RAM."""
        if self.refine is None:
            return params
        return faiss.IndexRefineSearchParameters(k_factor=float(max(1, shortlist)), base_index_params=params)

    @property
    def reranks_in_ram(self) -> bool:
        """Whether the index re-ranks its shortlist itself (a refine stage) rather than from the mapped vectors."""
        return self.refine is not None

    # the family's answers, asked of the layout
    def resident_bytes(self, n: int, dim: int) -> int:
        return self.family.resident_bytes(self, n, dim)

    @property
    def trains(self) -> bool:
        return self.family.trains(self)

    def train_size(self, n: int) -> int:
        return self.family.train_size(self, n)

    @property
    def exact(self) -> bool:
        return self.family.exact(self)

    @property
    def incremental(self) -> bool:
        return self.refine is None and self.family.incremental(self)

    @property
    def knob(self) -> SearchKnob | None:
        return self.family.knob(self)

    def search_parameters(self, settings: Mapping[str, Any]) -> faiss.SearchParameters | None:
        return self.wrap_parameters(self.family.search_parameters(self, settings), int(settings.get("shortlist", 1)))


def factory_index(layout: IndexLayout, dim: int) -> faiss.Index:
    """The empty faiss index of a layout, ranking by inner product."""
    return faiss.index_factory(dim, layout.factory, faiss.METRIC_INNER_PRODUCT)


def gpus_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def train_limit() -> int:
    return TRAIN_SAMPLE_LIMIT_GPU if gpus_available() else TRAIN_SAMPLE_LIMIT


def _components(factory: str) -> list[str]:
    """Comma-separated parts, commas inside parentheses kept."""
    parts, depth, current = [], 0, ""
    for char in factory:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


class FamilyRegistry:
    """The families mullama builds, by name; `parse` asks each to claim a factory string."""

    def __init__(self) -> None:
        self.families: dict[str, IndexFamily] = {}

    def register(self, family: IndexFamily) -> IndexFamily:
        self.families[family.name] = family
        return family

    def parse(self, factory: str) -> IndexLayout:
        parts = [p.strip() for p in _components(factory)]
        transforms: list[str] = []
        coded_dim = 0
        while len(parts) > 1 and (match := _TRANSFORM.fullmatch(parts[0])):
            transforms.append(parts.pop(0))
            coded_dim = int(next((g for g in match.groups() if g), coded_dim))
        refine = None
        if len(parts) > 1 and (match := _REFINE.fullmatch(parts[-1])):
            parts.pop()
            refine = parse_codes(match.group(1) or "Flat")
        for family in self.families.values():
            if (claimed := family.read(parts)) is not None:
                params, codes = claimed
                return IndexLayout(factory, family, params, parse_codes(codes), tuple(transforms), coded_dim, refine)
        raise UnknownLayout(f"no index family reads {','.join(parts)!r} (families: {', '.join(self.families)})")
