"""One unit of index work, run in-process or as a Ray task: embed some clips (their stacks, or for a text index
their captions), write them as one segment (vectors and catalog), and encode them into a copy of the empty
trained index."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from mullama.knn.files import IndexFolder
from mullama.knn.recipes import Recipe, normalise
from mullama.knn.text_model import load_text_encoder
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


Captions = dict[str, list[str]]  # clip id -> its captions (text indexes)


def clip_line(record: ClipRecord, captions: Captions | None = None) -> dict[str, Any]:
    line = {"clip_id": record.clip_id, "source": record.source, "duration": record.duration,
            "partition": record.partition}
    if captions is not None:
        line["captions"] = captions[record.clip_id]
    return line


def embed_rows(store: FeatureStore, recipe: Recipe, records: list[ClipRecord], captions: Captions | None,
               bar: tqdm | None = None) -> np.ndarray:
    """float16 unit vectors of the records, in order: of their captions for a text recipe, else of their stacks."""
    if recipe.is_text:
        return embed_captions(recipe, [captions[r.clip_id] for r in records] if captions else [[]] * len(records),
                              bar)
    return embed_records(store, recipe, records, bar)


def embed_captions(recipe: Recipe, texts: list[list[str]], bar: tqdm | None = None) -> np.ndarray:
    """One vector per clip: the normalised mean of its captions' unit embeddings (one row per clip keeps the
    index's row -> clip map; docs/knn.md says why averaging, not a row per caption)."""
    encoder = load_text_encoder(recipe.text_model)
    out = np.empty((len(texts), recipe.text_model.dim), dtype=np.float16)
    for start in range(0, len(texts), READ_BATCH):
        chunk = texts[start:start + READ_BATCH]
        counts = np.array([len(t) for t in chunk])
        embedded = encoder.embed([caption for clip in chunk for caption in clip])
        sums = np.add.reduceat(embedded, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
        out[start:start + len(chunk)] = normalise(sums)
        if bar is not None:
            bar.update(len(chunk))
    return out


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


def encode_segment(store: FeatureStore, folder_url: str, recipe: dict[str, Any], empty_index: bytes | None,
                   clip_ids: list[str], segment_name: str, captions: Captions | None = None, threads: int = 0,
                   bar: tqdm | None = None) -> tuple[dict[str, Any], bytes | None]:
    """Embed the clips `clip_ids` (their latest records; `captions`: theirs, for a text recipe), write them as
    one segment, and encode them into a copy of the empty trained index (None for index types that cannot
    merge, e.g. HNSW: the driver adds the vectors itself). `store` is the caller's open store: opening it
    again would read every commit record a second time."""
    if threads:
        faiss.omp_set_num_threads(threads)
    latest = store.records_by_id()
    records = [latest[clip_id] for clip_id in clip_ids]
    vectors = embed_rows(store, Recipe.from_dict(recipe), records, captions, bar)
    segment = IndexFolder(folder_url).write_segment(segment_name, vectors, [clip_line(r, captions) for r in records])
    encoded = None
    if empty_index is not None:
        index = faiss.deserialize_index(np.frombuffer(empty_index, dtype=np.uint8))
        index.add(vectors.astype(np.float32))
        encoded = faiss.serialize_index(index).tobytes()
    return segment.to_dict(), encoded
