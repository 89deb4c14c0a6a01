"""Searching an index: the Python API behind `mullama index query`.

    index = ClipIndex.open("store/")                    # or an index folder / URL; name="default"
    index.search(clip_id="demo_0003.flac", k=10)       # neighbours of a stored clip (itself left out)
    index.search(stacks=stack[None])                    # neighbours of new stacks (same encoder and recipe)
    ClipIndex.open("store/", "words").search(texts=["calm solo piano"])  # a text index: clips by words
    index.search_vectors(vectors, k)                    # raw (scores, rows) for unit vectors
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.knn.families import describe
from mullama.knn.files import INDEXES, IndexFolder, IndexMetadata
from mullama.knn.index_family import IndexLayout
from mullama.store.feature_store import FeatureStore
from mullama.store.location import Location

# Readers that find the generation they read replaced start again; a build takes seconds to minutes, so three
# replacements during one open mean something else is wrong.
OPEN_ATTEMPTS = 3
EXACT_CHUNK = 65_536  # rows scored per matrix product in exact search: 128 MB of float16 at 1024 dimensions


@dataclass(frozen=True)
class Neighbour:
    clip_id: str
    score: float  # cosine similarity (inner product of unit vectors)
    source: str
    duration: float
    row: int
    captions: tuple[str, ...] = ()  # a text index's captions of the clip

    def to_dict(self) -> dict[str, Any]:
        found = {"clip_id": self.clip_id, "score": round(self.score, 6), "source": self.source,
                 "duration": self.duration}
        return {**found, "captions": list(self.captions)} if self.captions else found


class RowVectors:
    """The float16 vectors of every row, across segments, gathered by row number."""

    def __init__(self, segments: list[np.ndarray]):
        self.segments = segments
        self.offsets = np.cumsum([0] + [s.shape[0] for s in segments])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self.segments[0].shape[1] if self.segments else 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32; rows must be valid."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((rows.shape[0], self.dim), dtype=np.float32)
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        for segment in np.unique(owner):
            where = np.nonzero(owner == segment)[0]
            local = rows[where] - self.offsets[segment]
            order = np.argsort(local)  # ascending reads are kind to the page cache
            out[where[order]] = self.segments[segment][local[order]]
        return out

    def chunks(self) -> Any:
        for segment, start in zip(self.segments, self.offsets[:-1]):
            for low in range(0, segment.shape[0], EXACT_CHUNK):
                yield int(start + low), np.asarray(segment[low:low + EXACT_CHUNK], dtype=np.float32)


def exact_search(vectors: RowVectors, queries: np.ndarray, k: int, excluded: set[int] | None = None,
                 exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product over every row: (scores, rows), rows -1 where fewer exist.
    `excluded` rows never appear; `exclude_rows[i]` is left out of query i's answer (the query itself)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = queries.shape[0]
    best_scores = np.full((n, k), -np.inf, dtype=np.float32)
    best_rows = np.full((n, k), -1, dtype=np.int64)
    for start, block in vectors.chunks():
        scores = queries @ block.T
        if excluded:
            local = np.array([r - start for r in excluded if start <= r < start + block.shape[0]], dtype=np.int64)
            scores[:, local] = -np.inf
        if exclude_rows is not None:
            inside = (exclude_rows >= start) & (exclude_rows < start + block.shape[0])
            scores[np.nonzero(inside)[0], exclude_rows[inside] - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, rows], axis=1)
        top = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    best_rows[~np.isfinite(best_scores)] = -1
    return best_scores, best_rows


class Searcher:
    """An index plus its row vectors: a shortlist from the index, re-ranked exactly from the vectors, or by the
    index's own refine codes in RAM (then queries read no vectors: a compact index's pages stay on disk)."""

    def __init__(self, index: faiss.Index, layout: IndexLayout, vectors: RowVectors, search: dict[str, Any],
                 masked_rows: Sequence[int]):
        self.index = index
        self.layout = layout
        self.vectors = vectors
        self.search_settings = dict(search)
        self.masked = np.asarray(sorted(masked_rows), dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, exclude_rows: np.ndarray | None = None,
               shortlist: int = 0, **knobs: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best rows per query, best first; rows -1 where fewer exist. `knobs`
        (nprobe, ef_search: the family's, 0 for the tuned value) override the index's search settings."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        extra = 1 if exclude_rows is not None else 0
        shortlist = shortlist or int(self.search_settings.get("shortlist", 1))
        from_vectors = shortlist if not self.layout.reranks_in_ram else 1  # a refine stage re-ranks in faiss
        wanted = (k + extra) * from_vectors
        wanted = min(wanted + min(len(self.masked), wanted), max(1, self.index.ntotal))  # room for masked rows
        asked = {key: value for key, value in knobs.items() if value}
        params = self.layout.search_parameters({**self.search_settings, **asked, "shortlist": shortlist})
        scores, rows = self.index.search(queries, wanted, params=params)
        if exclude_rows is not None:
            rows = np.where(rows == exclude_rows[:, None], -1, rows)
        if self.masked.size:  # rows of re-extracted clips: filtered here, since not every index takes a selector
            rows = np.where(np.isin(rows, self.masked), -1, rows)
        if from_vectors > 1:  # exact scores from the float16 vectors, then the best k
            valid = rows >= 0
            exact = np.full(rows.shape, -np.inf, dtype=np.float32)
            if valid.any():
                gathered = self.vectors.gather(rows[valid])
                exact[valid] = np.einsum("ij,ij->i", gathered, np.repeat(queries, valid.sum(axis=1), axis=0))
            scores = exact
        else:
            scores = np.where(rows >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, rows = np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)
        rows[~np.isfinite(scores)] = -1
        return scores, rows


def index_url(path_or_store: str, name: str) -> str:
    """An index folder URL from either an index folder or a store (its `indexes/NAME`)."""
    location = Location(path_or_store)
    if location.exists("index.json"):
        return location.url
    if location.exists("zarr.json"):
        return f"{location.url.rstrip('/')}/{INDEXES}/{name}"
    raise MullamaError(f"{path_or_store} is neither an index folder (no index.json) nor a feature store "
                       "(no zarr.json)")


def open_index(name_or_folder: str, store: str = "") -> "ClipIndex":
    """An index given as a folder (path or URL) or as the name of one of `store`'s indexes."""
    if Path(name_or_folder).is_dir() or "://" in name_or_folder:
        return ClipIndex.open(name_or_folder)
    if not store:
        raise MullamaError(f"index {name_or_folder!r}: give an index folder, or the store holding an index of that "
                           "name")
    return ClipIndex.open(store, name_or_folder)


class ClipIndex:
    """An opened index: metadata, FAISS index, row vectors and the row -> clip catalog."""

    def __init__(self, folder: IndexFolder, metadata: IndexMetadata, searcher: Searcher,
                 clips: list[dict[str, Any]]):
        self.folder = folder
        self.metadata = metadata
        self.searcher = searcher
        self.clips = clips
        self.rows_by_clip = {clip["clip_id"]: row for row, clip in enumerate(clips)}
        for row in metadata.masked_rows:  # a superseded row: the clip's newer row is the one to find
            if self.rows_by_clip.get(clips[row]["clip_id"]) == row:
                del self.rows_by_clip[clips[row]["clip_id"]]

    @classmethod
    def open(cls, path_or_store: str, name: str = "default") -> "ClipIndex":
        """The index as its index.json names it. A build commits by replacing index.json and then deletes the
        files of the generation it replaced, so a reader that read the old index.json may find its files gone:
        it reads the new index.json and starts again, and so sees the old index or the new one whole."""
        folder = IndexFolder(index_url(path_or_store, name))
        if not folder.exists():
            raise MullamaError(f"{path_or_store} has no index named {name!r}; build it with "
                               f"`mullama index build {path_or_store} --name {name}`")
        metadata = folder.read_metadata()
        for _ in range(OPEN_ATTEMPTS - 1):
            try:
                return cls.read(folder, metadata)
            except MullamaError:
                current = folder.read_metadata()
                if current.index_file == metadata.index_file:
                    raise  # the files index.json names are damaged, not replaced
                metadata = current
        return cls.read(folder, metadata)

    @classmethod
    def read(cls, folder: IndexFolder, metadata: IndexMetadata) -> "ClipIndex":
        """The generation `metadata` names, its files checked against it."""
        index = folder.read_index(metadata)
        segments = [folder.read_vectors(segment, metadata.dim) for segment in metadata.segments]
        clips = [clip for segment in metadata.segments for clip in folder.read_clips(segment)]
        if index.ntotal != metadata.rows or len(clips) != metadata.rows:
            raise MullamaError(f"{folder.url}: the FAISS file holds {index.ntotal} rows, the catalog {len(clips)}, "
                               f"index.json {metadata.rows}; the index is corrupted, rebuild it")
        searcher = Searcher(index, describe(metadata.factory), RowVectors(segments), metadata.search,
                            metadata.masked_rows)
        return cls(folder, metadata, searcher, clips)

    # ----------------------------------------------------------------- identity
    @property
    def encoder(self) -> EncoderIdentity:
        return self.metadata.encoder

    @property
    def recipe(self) -> Any:
        return self.metadata.recipe

    def __len__(self) -> int:
        return len(self.rows_by_clip)

    def check_store(self, store: Any) -> list[str]:
        """Errors when the index no longer describes `store`; returns warnings (unindexed partitions)."""
        built = self.metadata.store
        if not store.encoder.same_encoder(self.encoder):
            raise MullamaError(f"index {self.folder.url} was built from encoder {self.encoder.name} (weights "
                               f"{self.encoder.weights_hash[:12]}), older than the store's encoder "
                               f"{store.encoder.name} (weights {store.encoder.weights_hash[:12]}); rebuild it with "
                               "`mullama index build --overwrite`")
        if built.get("created_at") != store.attributes.get("created_at"):
            raise MullamaError(f"index {self.folder.url} was built from another store at {built.get('url')} (created "
                               f"{built.get('created_at')}); rebuild it with `mullama index build --overwrite`")
        committed = {commit.partition for commit in store.commits()}
        gone = [p for p in self.metadata.partitions if p not in committed]
        if gone:
            raise MullamaError(f"index {self.folder.url} covers {len(gone)} partition(s) the store no longer has "
                               f"(e.g. {gone[0]}); rebuild it with `mullama index build --overwrite`")
        new = committed - set(self.metadata.partitions)
        if new:
            return [f"{len(new)} partition(s) committed since the index was built are not searched; run "
                    f"`mullama index build --update`"]
        return []

    def home_store(self) -> str:
        """The store whose indexes/ folder holds this index; '' for an index folder kept anywhere else."""
        parent = posixpath.dirname(self.folder.url.rstrip("/"))
        store = posixpath.dirname(parent)
        if posixpath.basename(parent) != INDEXES or not Location(store or ".").exists("zarr.json"):
            return ""
        return store or "."

    def home_store_warnings(self) -> list[str]:
        """A warning when the index lies in a store other than the one it was built from (a copied folder): its
        rows are that other store's clips, which `index build --update` refuses to extend."""
        home = self.home_store()
        if not home:
            return []
        try:
            store = FeatureStore.open(home)
        except MullamaError:
            return []  # a store that does not open: its own commands say why
        built = self.metadata.store
        committed = {commit.partition for commit in store.commits()}  # partition names are unique to a store
        if built.get("created_at") == store.attributes.get("created_at") and set(self.metadata.partitions) <= committed:
            return []
        return [f"index {self.folder.url} was built from another store at {built.get('url')} (created "
                f"{built.get('created_at')}), not {home}: its results are that store's clips; rebuild it with "
                f"`mullama index build {home} --overwrite`"]

    # ----------------------------------------------------------------- search
    def embed(self, stacks: np.ndarray, encoder: EncoderIdentity | None = None) -> np.ndarray:
        """Unit vectors of new stacks, with the index's recipe; stacks of another encoder are refused."""
        if encoder is not None:
            self.check_encoder(encoder)
        return self.metadata.recipe.embed(stacks)

    def check_encoder(self, encoder: EncoderIdentity) -> None:
        if not encoder.same_encoder(self.encoder):
            raise MullamaError(f"the query comes from encoder {encoder.name} (weights {encoder.weights_hash[:12]}), "
                               f"the index holds {self.encoder.name} (weights {self.encoder.weights_hash[:12]}); "
                               "query with the index's encoder")

    def search_vectors(self, vectors: np.ndarray, k: int = 10, exclude_rows: np.ndarray | None = None,
                       **settings: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.metadata.dim:
            raise MullamaError(f"query vectors must have shape (n, {self.metadata.dim}), got {vectors.shape}")
        return self.searcher.search(vectors, k, exclude_rows, **settings)

    def row_of(self, clip_id: str) -> int:
        try:
            return self.rows_by_clip[clip_id]
        except KeyError:
            raise MullamaError(f"clip {clip_id!r} is not in index {self.folder.url}; check the id (`mullama store "
                               "info --json`) or run `mullama index build --update`") from None

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored unit vectors of rows (the kNN-mix prototypes)."""
        return self.searcher.vectors.gather(np.asarray(rows))

    def neighbours(self, scores: np.ndarray, rows: np.ndarray) -> list[list[Neighbour]]:
        return [[Neighbour(self.clips[r]["clip_id"], float(s), self.clips[r].get("source", ""),
                           float(self.clips[r].get("duration", 0.0)), int(r), tuple(self.clips[r].get("captions", ())))
                 for s, r in zip(score_row, row_row) if r >= 0] for score_row, row_row in zip(scores, rows)]

    def embed_texts(self, texts: Sequence[str], text_model: str = "") -> np.ndarray:
        """Unit vectors of words, by the index's recorded text model (from `text_model` when it moved; another
        model there is refused)."""
        recorded = self.metadata.recipe.text_model
        if recorded is None:
            raise MullamaError(f"index {self.folder.url} indexes audio stacks (recipe {self.metadata.recipe.name}), "
                               "not captions; search words in a text index (`mullama index build --captions`)")
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise MullamaError("give non-empty words to search for")
        from mullama.knn.text_model import load_text_encoder  # torch and transformers: not for `mullama --help`,
        # which imports this module through mullama.knn

        return load_text_encoder(recorded, text_model).embed(list(texts))

    def search(self, *, clip_ids: Sequence[str] = (), stacks: np.ndarray | None = None,
               encoder: EncoderIdentity | None = None, texts: Sequence[str] = (), text_model: str = "",
               k: int = 10, **settings: int) -> list[list[Neighbour]]:
        """Neighbours of stored clips (each left out of its own list), of new stacks, or of words (`texts`, in
        a text index)."""
        if k < 1:
            raise MullamaError(f"k must be at least 1, got {k}")
        if texts:
            return self.neighbours(*self.search_vectors(self.embed_texts(texts, text_model), k, **settings))
        if stacks is not None:
            return self.neighbours(*self.search_vectors(self.embed(stacks, encoder), k, **settings))
        rows = np.array([self.row_of(clip_id) for clip_id in clip_ids], dtype=np.int64)
        return self.neighbours(*self.search_vectors(self.vectors(rows), k, exclude_rows=rows, **settings))
