"""The index families mullama builds, one module each, registered here: a new family is a module with an
`IndexFamily` (mullama/knn/index_family.py) and one line below."""

from __future__ import annotations

from mullama.errors import MullamaError
from mullama.knn.families.flat import FlatFamily
from mullama.knn.families.hnsw import HnswFamily
from mullama.knn.families.ivf import IvfFamily
from mullama.knn.index_family import FamilyRegistry, IndexLayout, UnknownLayout

FAMILIES = FamilyRegistry()
FAMILIES.register(FlatFamily())
FAMILIES.register(IvfFamily())
FAMILIES.register(HnswFamily())


def describe(factory: str) -> IndexLayout:
    """The layout of a factory string an index was built with (index.json's `factory`)."""
    try:
        return FAMILIES.parse(factory)
    except UnknownLayout as exc:
        raise MullamaError(f"index type {factory!r}: {exc}; rebuild the index with a supported --type") from None


__all__ = ["FAMILIES", "describe"]
