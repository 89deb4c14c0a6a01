"""Which FAISS index to build for n vectors of a dimension under a memory budget, and how to search it.

Every index here holds unit vectors and ranks by inner product (cosine). Approximate indexes are
searched for a shortlist that is re-ranked exactly from the float16 vectors kept beside the index in
memory-mapped files (files.py): the codes in RAM only have to find the neighbours, not order them. So
the default codes are the smallest and fastest to scan, 4-bit fast-scan product codes (half a byte per
4 dimensions), and the time saved scanning is spent probing more lists, which is what recall needs
(BENCHMARKS.md, "kNN index").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss

from mullama.errors import MullamaError

# Exact search up to this many vectors: 64k x 1024 float32 is 256 MB, scanned in 16 ms per query on one
# core of the 2-core development machine (measured with IndexFlatIP); beyond it an IVF index is faster.
EXACT_LIMIT = 65_536
# Training points per IVF list: faiss warns below 39; 40 keeps k-means of 2,048 lists on 2 cores under a
# minute (benchmarks/knn_index.py), and more points did not change recall on the benchmark data.
TRAIN_POINTS_PER_LIST = 40
TRAIN_SAMPLE_LIMIT = 200_000  # bounds k-means time: BENCHMARKS.md, "kNN index", times it at 1M vectors
TRAIN_SAMPLE_LIMIT_GPU = 2_000_000  # with faiss-gpu: 40 vectors for each of up to 50k lists
# The shortlist re-ranked exactly, as a multiple of k. On the benchmark data (BENCHMARKS.md, "kNN index")
# 4k candidates from 4-bit fast-scan product codes (4 dimensions a code) held every true neighbour that the
# probed lists held: 10k and 20k added nothing; recall is limited by the lists probed, not by the codes.
SHORTLIST = 4
AUTO = "auto"
SQ_SAMPLE = 10_000  # the least any trained index gets: scalar quantisers learn a range per dimension from it


@dataclass(frozen=True)
class IndexChoice:
    factory: str  # a faiss index_factory string
    exact: bool
    shortlist: int  # re-ranked candidates per neighbour asked (1: no re-ranking)
    train_size: int  # vectors k-means and the quantiser are trained on (0: no training)
    reason: str


def resident_bytes(factory: str, n: int, dim: int) -> int:
    """Approximate RAM of an index of n vectors: codes, ids, lists and graph links (not the re-rank vectors)."""
    code = dim * 4
    if "SQ8" in factory:
        code = dim
    elif "SQfp16" in factory:
        code = 2 * dim
    elif match := re.search(r"PQ(\d+)(?:x(\d+))?", factory):
        code = int(match.group(1)) * int(match.group(2) or 8) // 8
    extra = 0
    if factory.startswith("IVF"):
        nlist = int(re.search(r"IVF(\d+)", factory).group(1))  # type: ignore[union-attr]
        extra = 8 * n + 4 * dim * nlist
    elif match := re.match(r"HNSW(\d+)", factory):
        extra = 2 * int(match.group(1)) * 4 * n * 1.05  # level-0 links, plus the few upper levels
    return int(code * n + extra)


def train_limit() -> int:
    return TRAIN_SAMPLE_LIMIT_GPU if gpus_available() else TRAIN_SAMPLE_LIMIT


def _power_of_two_lists(n: int) -> int:
    """About 2 * sqrt(n) lists, a power of two, with 40 training vectors per list within the sample limit.
    Fast-scan codes make long lists cheap to scan, so fewer lists than the usual 4 sqrt(n) halve training
    and assignment time at the same share of the collection scanned."""
    target = 2 ** round(math.log2(max(2.0, 2 * math.sqrt(n))))
    most = min(n, train_limit()) // TRAIN_POINTS_PER_LIST
    return int(max(1, min(target, 2 ** int(math.log2(max(1, most))), 65_536)))


def choose_index(n: int, dim: int, memory_budget: float, forced: str = AUTO) -> IndexChoice:
    """The index for n vectors of `dim` floats within `memory_budget` bytes of RAM (forced: any factory
    string faiss accepts, e.g. Flat, IVF4096,SQ8, HNSW32,SQ8, IVF2048,PQ128)."""
    if n <= 0:
        raise MullamaError("there are no vectors to index: the store has no committed clips")
    if forced != AUTO:
        return _forced(forced, n, dim)
    flat = resident_bytes("Flat", n, dim)
    if n <= EXACT_LIMIT and flat <= memory_budget:
        return IndexChoice("Flat", True, 1, 0, f"exact: {n} vectors (up to {EXACT_LIMIT} are searched exactly)")
    nlist = _power_of_two_lists(n)
    for m in sorted((m for m in range(2, dim + 1, 2) if dim % m == 0 and m <= max(2, dim // 4)), reverse=True):
        factory = f"IVF{nlist},PQ{m}x4fs"
        if resident_bytes(factory, n, dim) <= memory_budget:
            return IndexChoice(factory, False, SHORTLIST, train_size(factory, n),
                               f"{n} vectors: {m // 2}-byte fast-scan product codes fit the "
                               f"{memory_budget / 1e9:.2f} GB budget")
    smallest = resident_bytes(f"IVF{nlist},PQ2x4fs", n, dim)
    raise MullamaError(f"no index of {n} x {dim} vectors fits {memory_budget / 1e9:.4g} GB; raise --memory-gb to at "
                       f"least {smallest / 1e9:.4g}")


def check_factory(factory: str, dim: int) -> None:
    """Refuse a --type faiss cannot build for `dim` dimensions."""
    if factory == AUTO:
        return
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise MullamaError(f"--type {factory!r} is not a FAISS index description for {dim} dimensions "
                           f"({str(exc).splitlines()[-1].strip()}); try Flat, IVF1024,SQ8 or HNSW32,SQ8") from None


def _forced(factory: str, n: int, dim: int) -> IndexChoice:
    check_factory(factory, dim)
    if factory == "Flat":
        return IndexChoice(factory, True, 1, 0, "forced: exact")
    nlist = int(m.group(1)) if (m := re.search(r"IVF(\d+)", factory)) else 0
    if nlist and nlist > n:
        raise MullamaError(f"--type {factory}: {nlist} lists for {n} vectors; use at most {max(1, n // 39)} lists")
    return IndexChoice(factory, False, SHORTLIST, train_size(factory, n), "forced")


def train_size(factory: str, n: int) -> int:
    """A bounded training sample: enough points per IVF list, and per code of each product quantiser."""
    nlist = int(m.group(1)) if (m := re.search(r"IVF(\d+)", factory)) else 0
    pq = re.search(r"PQ\d+(?:x(\d+))?", factory)
    codes = 2 ** int(pq.group(1) or 8) if pq else 0
    return min(n, train_limit(), max(TRAIN_POINTS_PER_LIST * nlist, TRAIN_POINTS_PER_LIST * codes, SQ_SAMPLE))


def make_index(choice: IndexChoice, dim: int) -> faiss.Index:
    index = faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.seed = 1234  # faiss's IVF k-means: 10 iterations, spherical for inner product; seeded here
        if gpus_available():  # faiss-gpu (the `gpu` extra): k-means assignment on every GPU
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))
    return index


def gpus_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_parameters(index: faiss.Index, nprobe: int = 0, ef_search: int = 0) -> faiss.SearchParameters | None:
    """Per-call search settings (thread-safe, unlike setting nprobe on the index)."""
    if ivf_of(index) is not None:
        return faiss.SearchParametersIVF(nprobe=max(1, nprobe))
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(16, ef_search))
    return None
