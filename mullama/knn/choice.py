"""Which FAISS index to build for n vectors of a dimension under a memory budget (families/: how to search it).

Every index here holds unit vectors and ranks by inner product (cosine). Approximate indexes are
searched for a shortlist that is re-ranked: the codes scanned only have to find the neighbours, not order
them. So the codes scanned are 4-bit fast-scan product codes (half a byte per 4 dimensions or more), and
the time saved scanning is spent probing more lists, which is what recall needs on spread data
(BENCHMARKS.md, "kNN index"). The re-ranking reads the float16 vectors kept beside the index in
memory-mapped files (files.py) when their pages fit the budget with the codes: a serving process's queries
read them from all over the file, so they are memory like any other. Otherwise finer codes kept in RAM
(a faiss refine stage: 8- or 4-bit scalar, or 8-bit product codes) re-rank, and queries read no file.
Where clips are dense fast-scan codes cannot even find the neighbours, and finer codes follow while they
fit the budget (build.py tries them in order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

from mullama.errors import MullamaError
from mullama.knn.families import FAMILIES
from mullama.knn.index_family import TRAIN_POINTS_PER_LIST, IndexLayout, UnknownLayout, train_limit

# Exact search while a query scores at most this many vector-dimensions (n x dim): 65,536 x 1024 float32
# (256 MB) is scanned in 16 ms per query on one core of the 2-core development machine (measured with
# IndexFlatIP); beyond it an IVF index is faster. The cost, not the clip count, decides: 100,000 x 64
# (issue 28's dense collection, 26 MB) costs a tenth of the bound and is searched exactly.
EXACT_COST = 65_536 * 1024
# Codes tried after the fast-scan product codes, finer and larger per vector, while --target-recall is
# missed and they fit --memory-gb: 8-bit scalar, 16-bit float, then the float32 vectors themselves.
FINER_CODES = ("SQ8", "SQfp16", "Flat")
# A fast-scan sub-quantiser codes at least this many dimensions (half a byte for 4).
FINEST_DIMS_PER_CODE = 4
# At most this many sub-quantisers (16 B a vector), unless that would code more than COARSEST_DIMS_PER_CODE
# dimensions each. The codes only find the shortlist; the refine codes or the float16 vectors order it, and a
# longer shortlist (tuning.py) makes up for coarser codes. A single query's scan is bound by the bytes of codes
# it streams: at 1,000,000 x 1024 (BENCHMARKS.md, "kNN index"), re-ranked from SQ8 at nprobe 352 of 2,048, 32
# sub-quantisers with an 8k shortlist reached recall@10 0.9966 against 0.9963 for 64 with 4k, at p50 1.07
# against 2.11 ms (one thread, median of three interleaved rounds in one process): their 16 MB of codes and the
# 8 MB of centroids stay in a 32 MB L3 cache, where 64 sub-quantisers' 32 MB do not.
MOST_SUBQUANTIZERS = 32
COARSEST_DIMS_PER_CODE = 32
# The float16 vectors a re-ranking reads are memory-mapped; over a serving process's queries they are read from
# all over the file, so their page cache counts against --memory-gb like the index's own RAM.
MAPPED_BYTES_PER_DIM = 2
PQ8_LEAST_TRAINING = 39 * 256  # vectors faiss needs to train 8-bit product codes (256 codewords each)
# The first shortlist tuning tries, as a multiple of k (tuning.py lengthens it while that pays). On the
# benchmark data (BENCHMARKS.md, "kNN index") 4k candidates from 4-bit fast-scan product codes of 4 dimensions
# each held every true neighbour that the probed lists held (10k and 20k added nothing); codes of 32 dimensions
# each need 8k.
SHORTLIST = 4
AUTO = "auto"


@dataclass(frozen=True)
class IndexChoice:
    layout: IndexLayout  # the parsed faiss index_factory string
    shortlist: int  # re-ranked candidates per neighbour asked (1: no re-ranking)
    train_size: int  # vectors k-means and the quantiser are trained on (0: no training)
    reason: str

    @property
    def factory(self) -> str:
        return self.layout.factory

    @property
    def exact(self) -> bool:
        return self.layout.exact


def _power_of_two_lists(n: int) -> int:
    """About 2 * sqrt(n) lists, a power of two, with 40 training vectors per list within the sample limit.
    Fast-scan codes make long lists cheap to scan, so fewer lists than the usual 4 sqrt(n) halve training
    and assignment time at the same share of the collection scanned."""
    target = 2 ** round(math.log2(max(2.0, 2 * math.sqrt(n))))
    most = min(n, train_limit()) // TRAIN_POINTS_PER_LIST
    return int(max(1, min(target, 2 ** int(math.log2(max(1, most))), 65_536)))


def choose_index(n: int, dim: int, memory_budget: float, forced: str = AUTO) -> IndexChoice:
    """The first index to try for n vectors of `dim` floats within `memory_budget` bytes of RAM."""
    return candidate_indexes(n, dim, memory_budget, forced)[0]


def candidate_indexes(n: int, dim: int, memory_budget: float, forced: str = AUTO) -> list[IndexChoice]:
    """The indexes to try in order, the next when the one before misses --target-recall (forced: any factory
    string of a registered family, e.g. Flat, IVF4096,SQ8, HNSW32,SQ8, IVF2048,PQ128: that one alone)."""
    if n <= 0:
        raise MullamaError("there are no vectors to index: the store has no committed clips")
    if forced != AUTO:
        return [_forced(forced, n, dim)]
    flat = FAMILIES.parse("Flat")
    if n * dim <= EXACT_COST and flat.resident_bytes(n, dim) <= memory_budget:
        return [IndexChoice(flat, 1, 0, f"exact: {n} x {dim} vectors (up to {EXACT_COST:,} vector-dimensions a "
                                        "query are searched exactly)")]
    nlist = _power_of_two_lists(n)
    budget = f"{memory_budget / 1e9:.2f} GB budget"
    first = _fast_scan(n, dim, nlist, memory_budget)
    if first is None:
        smallest = FAMILIES.parse(f"IVF{nlist},PQ2x4fs").resident_bytes(n, dim)
        raise MullamaError(f"no index of {n} x {dim} vectors fits {memory_budget / 1e9:.4g} GB; raise --memory-gb "
                           f"to at least {smallest / 1e9:.4g}")
    layout, reranking = first
    finer = [FAMILIES.parse(f"IVF{nlist},{code}") for code in FINER_CODES]
    return [IndexChoice(layout, SHORTLIST, layout.train_size(n),
                        f"{n} vectors: {layout.codes.subquantizers // 2}-byte fast-scan product codes, re-ranked "
                        f"{reranking}, fit the {budget}")] + \
           [IndexChoice(finer_layout, SHORTLIST, finer_layout.train_size(n),
                        f"{n} vectors: {finer_layout.codes.text} codes fit the {budget}; coarser codes missed "
                        "--target-recall")
            for finer_layout in finer if finer_layout.resident_bytes(n, dim) <= memory_budget]


def _fast_scan(n: int, dim: int, nlist: int, memory_budget: float) -> tuple[IndexLayout, str] | None:
    """The fast-scan index and how it re-ranks, the most exact re-ranking first: from the mapped float16 vectors
    when their pages fit the budget beside the codes, else from the finest refine codes in RAM that fit, else
    (the budget too small for any) from the mapped vectors, outside the budget. Within each, the largest codes
    up to fast_scan_subquantizers(dim) that fit."""
    most = fast_scan_subquantizers(dim)
    sizes = sorted((m for m in range(2, dim + 1, 2) if dim % m == 0 and m <= most), reverse=True)
    mapped = MAPPED_BYTES_PER_DIM * dim * n
    options = [("", mapped, "from the memory-mapped float16 vectors"),
               *((f",Refine({code})", 0, f"from {code} codes in RAM") for code in _refine_codes(n, dim)),
               ("", 0, "from the memory-mapped float16 vectors (their pages lie outside the budget)")]
    for suffix, outside_index, reranking in options:
        for m in sizes:
            layout = FAMILIES.parse(f"IVF{nlist},PQ{m}x4fs{suffix}")
            if layout.resident_bytes(n, dim) + outside_index <= memory_budget:
                return layout, reranking
    return None


def fast_scan_subquantizers(dim: int) -> int:
    """The most sub-quantisers worth scanning at `dim` dimensions: 32 (16 at 64 dimensions, 128 at 4096)."""
    finest = max(2, dim // FINEST_DIMS_PER_CODE)
    return max(min(finest, MOST_SUBQUANTIZERS), min(finest, dim // COARSEST_DIMS_PER_CODE))


def _refine_codes(n: int, dim: int) -> list[str]:
    """Refine codes, finest first: 8- and 4-bit scalar, then 8-bit product codes of 4 and 8 dimensions each
    (their 256 codewords need 39 x 256 training vectors: faiss refuses fewer)."""
    product = [f"PQ{dim // per}" for per in (4, 8) if dim % per == 0 and n >= PQ8_LEAST_TRAINING]
    return ["SQ8", "SQ4", *product]


def check_factory(factory: str, dim: int) -> None:
    """Refuse a --type faiss cannot build for `dim` dimensions or no registered family reads."""
    if factory != AUTO:
        layout_of(factory, dim)


def layout_of(factory: str, dim: int) -> IndexLayout:
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        return FAMILIES.parse(factory)
    except (RuntimeError, UnknownLayout) as exc:
        raise MullamaError(f"--type {factory!r} is not a FAISS index description for {dim} dimensions "
                           f"({str(exc).splitlines()[-1].strip()}); try Flat, IVF1024,SQ8 or HNSW32,SQ8") from None


def _forced(factory: str, n: int, dim: int) -> IndexChoice:
    layout = layout_of(factory, dim)
    if layout.exact:
        return IndexChoice(layout, 1, 0, "forced: exact")
    if why := layout.family.refusal(layout, n):
        raise MullamaError(f"--type {factory}: {why}")
    return IndexChoice(layout, SHORTLIST, layout.train_size(n), "forced")


def make_index(choice: IndexChoice, dim: int) -> faiss.Index:
    return choice.layout.family.make(choice.layout, dim)


def reaching_advice(n: int, dim: int, memory_budget: float, forced: str) -> str:
    """What would reach the target recall when nothing within the budget did: finer codes that did not fit,
    and exact search, which always does."""
    advice = [f"--type Flat (exact search: --memory-gb {_gigabytes_up(FAMILIES.parse('Flat').resident_bytes(n, dim))})"]
    if forced == AUTO:
        nlist = _power_of_two_lists(n)
        unfit = [layout for layout in (FAMILIES.parse(f"IVF{nlist},{code}") for code in FINER_CODES[:-1])
                 if layout.resident_bytes(n, dim) > memory_budget]
        if unfit:
            advice.insert(0, f"--memory-gb {_gigabytes_up(unfit[0].resident_bytes(n, dim))} (room for "
                             f"{unfit[0].factory} codes)")
    return " or ".join(advice)


def _gigabytes_up(size: int) -> str:
    """`size` bytes in GB, three significant digits, rounded up so that the advice suffices."""
    gigabytes = size / 1e9
    scale = 10 ** (2 - math.floor(math.log10(gigabytes)))
    return f"{math.ceil(gigabytes * scale) / scale:g}"
