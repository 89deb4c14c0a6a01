"""One unit of index work, run in-process or as a Ray task: embed the clips of some partitions, write them as
one segment (vectors and catalog), and encode them into a copy of the empty trained index."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from mullama.knn.files import IndexFolder
from mullama.knn.recipes import Recipe
from mullama.store.feature_store import RESERVED_PREFIX, FeatureStore
from mullama.store.schema import STATUS_OK, ClipRecord

READ_BATCH = 256  # stacks read and embedded at a time: 25 x 1024 float32 x 256 = 26 MB


def indexed_records(store: FeatureStore, partitions: list[str]) -> dict[str, list[ClipRecord]]:
    """Per partition, the clips it still holds the latest stacks of (a later commit of a clip wins); never
    the store's reserved stacks (the silence of text-only training items is not a track)."""
    latest = store.records_by_id()
    commits = {c.partition: c for c in store.commits()}
    return {p: [r for r in commits[p].clips if r.status == STATUS_OK and latest[r.clip_id].partition == p
                and not r.clip_id.startswith(RESERVED_PREFIX)] for p in partitions}


def clip_line(record: ClipRecord) -> dict[str, Any]:
    return {"clip_id": record.clip_id, "source": record.source, "duration": record.duration,
            "partition": record.partition}


def embed_records(store: FeatureStore, recipe: Recipe, records: list[ClipRecord],
                  bar: tqdm | None = None) -> np.ndarray:
    """float16 unit vectors of the records' clip stacks, in order."""
    out = np.empty((len(records), store.stack_shape[1]), dtype=np.float16)
    for start in range(0, len(records), READ_BATCH):
        chunk = records[start:start + READ_BATCH]
        out[start:start + len(chunk)] = recipe.embed(store.get([r.clip_id for r in chunk]))
        if bar is not None:
            bar.update(len(chunk))
    return out


def encode_segment(store_url: str, folder_url: str, recipe: dict[str, Any], empty_index: bytes | None,
                   partitions: list[str], segment_name: str, threads: int = 0,
                   bar: tqdm | None = None) -> tuple[dict[str, Any], bytes | None]:
    """Embed `partitions`, write them as one segment, and encode them into a copy of the empty trained index
    (None for index types that cannot merge, e.g. HNSW: the driver adds the vectors itself)."""
    if threads:
        faiss.omp_set_num_threads(threads)
    store = FeatureStore.open(store_url)
    records = [r for records in indexed_records(store, partitions).values() for r in records]
    vectors = embed_records(store, Recipe.from_dict(recipe), records, bar)
    segment = IndexFolder(folder_url).write_segment(segment_name, vectors, [clip_line(r) for r in records])
    encoded = None
    if empty_index is not None:
        index = faiss.deserialize_index(np.frombuffer(empty_index, dtype=np.uint8))
        index.add(vectors.astype(np.float32))
        encoded = faiss.serialize_index(index).tobytes()
    return segment.to_dict(), encoded
