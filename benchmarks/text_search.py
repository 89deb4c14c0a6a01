"""Finding music by words at scale, measured side by side in one run, at each collection size given.

Data: N synthetic captions (one per clip) from templates of instruments, moods, genres and tempos, drawn with
a fixed seed, in a store of N clips (tiny random stacks: a text index never reads them). For each N:

  build        `mullama index build STORE --captions captions.jsonl --name words` (default MiniLM): captions/s
               over the whole build (embedding, index choice, tuning, writing), and the embedding's share
  query        `ClipIndex.search(texts=[q], k=10)` one query at a time: p50 / p99 ms, split into embedding the
               words and the FAISS search; and `POST /v1/search` through the server's route (FastAPI's test
               client, in process): p50 / p99 ms. The four take turns query by query (one machine's load
               falls on all alike); the index's open time is given too
  embedding    (once) MiniLM captions/s in batches of 64 (as the build embeds) against one caption at a time

    OMP_NUM_THREADS=1 python benchmarks/text_search.py --sizes 10000,100000 --work /tmp/text-bench
    OMP_NUM_THREADS=1 python benchmarks/text_search.py --sizes 10000,100000 --work /tmp/text-bench --reuse --queries 500
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mullama.config import build_config
from mullama.encoder_identity import EncoderIdentity
from mullama.knn import ClipIndex
from mullama.knn.build import build_index
from mullama.knn.config import IndexBuildConfig
from mullama.knn.text_model import EMBED_BATCH, load_text_encoder, text_model_identity
from mullama.serve.openai_errors import install_error_handlers
from mullama.serve.routes import search as search_route
from mullama.serve.services.catalog import Catalog
from mullama.serve.services.search import SearchService
from mullama.store import ClipResult, FeatureStore, StoreSettings

INSTRUMENTS = ["piano", "violin", "cello", "trumpet", "saxophone", "flute", "clarinet", "harp", "acoustic guitar",
               "electric guitar", "church organ", "drum kit", "synthesizer", "choir", "string quartet", "brass band",
               "accordion", "banjo", "marimba", "double bass"]
MOODS = ["calm", "joyful", "melancholic", "tense", "dreamy", "energetic", "solemn", "playful", "dark", "romantic",
         "triumphant", "nostalgic", "peaceful", "aggressive", "mysterious"]
GENRES = ["jazz ballad", "baroque chorale", "folk dance", "rock anthem", "film score", "bossa nova", "blues shuffle",
          "ambient piece", "march", "waltz", "funk groove", "hymn", "lullaby", "tango", "sonata"]
TEMPOS = ["slow", "moderate", "fast", "very slow", "lively"]
TEMPLATES = ["A {mood} {genre} played on the {instrument} at a {tempo} tempo.",
             "{Mood} {instrument} leads a {tempo} {genre}.",
             "This {tempo} {genre} features a {mood} {instrument} solo.",
             "I hear a {instrument} playing a {mood}, {tempo} {genre}.",
             "A {genre} with a {mood} {instrument} melody over a {tempo} pulse."]
QUERIES = ["calm solo piano", "something with a brass section", "a fast jazz tune", "sad cello", "dreamy synthesizer",
           "church music with an organ", "lively folk fiddle", "a romantic waltz", "dark ambient", "happy banjo"]
STORE_PARTITION = 5000


def synthetic_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        mood = rng.choice(MOODS)
        captions.append(rng.choice(TEMPLATES).format(mood=mood, Mood=mood.capitalize(), genre=rng.choice(GENRES),
                                                     instrument=rng.choice(INSTRUMENTS), tempo=rng.choice(TEMPOS)))
    return captions


def write_collection(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    """A store of `n` clips with 1 x 8 stacks, and one caption per clip in `mullama caption`'s format."""
    encoder = EncoderIdentity("synthetic", "c" * 64, "w" * 64, 24000, 1, 8)
    store = FeatureStore.open_or_create(str(folder / "store"), encoder, StoreSettings(precision="fp32"))
    stacks = np.random.default_rng(seed).normal(size=(n, 1, 1, 8)).astype(np.float32)
    for low in range(0, n, STORE_PARTITION):
        store.write_partition([ClipResult(f"clip{i:07d}", f"src/{i}.wav", "h", 3.0, stacks[i])
                               for i in range(low, min(n, low + STORE_PARTITION))], precision="fp32")
    captions = folder / "captions.jsonl"
    captions.write_text("".join(json.dumps({"clip_id": f"clip{i:07d}", "caption": caption}) + "\n"
                                for i, caption in enumerate(synthetic_captions(n, seed))))
    return folder / "store", captions


def query_texts(n: int, seed: int) -> list[str]:
    """The hand-written queries, then "mood instrument" pairs (310 in all, repeated beyond that)."""
    rng = random.Random(seed + 2)
    pairs = [f"{mood} {instrument}" for mood in MOODS for instrument in INSTRUMENTS]
    rng.shuffle(pairs)
    pool = QUERIES + pairs
    return [pool[i % len(pool)] for i in range(n)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def timed_together(calls: dict[str, Callable[[int], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call per query, the calls taking turns query by query so that all see the same load."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for number in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call(number)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def search_client(index: ClipIndex, store: FeatureStore) -> TestClient:
    """The server's /v1/search route alone, as the server mounts it (no LLM needed to search)."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(search_route.router)
    app.state.api = SimpleNamespace(search=SearchService(index, Catalog(store, None)))
    return TestClient(app)


def build_size(work: Path, n: int, seed: int) -> dict:
    """A fresh collection of `n` captions, indexed; the build's time."""
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    store_path, captions = write_collection(folder, n, seed)
    written = time.perf_counter() - started
    started = time.perf_counter()
    build_index(build_config(IndexBuildConfig, {"store": str(store_path), "captions": [str(captions)],
                                                "name": "words", "progress": False}))
    build_s = time.perf_counter() - started
    return {"store_written_s": round(written, 1), "build_s": round(build_s, 1),
            "build_captions_per_s": round(n / build_s, 1)}


def measure_queries(work: Path, n: int, seed: int, repeats: int) -> dict:
    """Single-query latencies on the index of `n` captions, and the time to open it."""
    store_path = work / f"n{n}" / "store"
    started = time.perf_counter()
    index = ClipIndex.open(str(store_path), "words")
    opened = time.perf_counter() - started
    index.search(texts=["warm up"], k=10)  # loads the model (cached for every later query)
    queries = query_texts(repeats, seed)
    vectors = [index.embed_texts([q]) for q in queries]
    client = search_client(index, FeatureStore.open(str(store_path)))
    seconds = timed_together({
        "search": lambda i: index.search(texts=[queries[i]], k=10),
        "embed_query": lambda i: index.embed_texts([queries[i]]),
        "faiss": lambda i: index.search_vectors(vectors[i], 10),
        "http": lambda i: client.post("/v1/search", json={"query": queries[i], "k": 10}).raise_for_status()},
        repeats)
    return {"captions": n, "index": index.metadata.factory, "rows": len(index), "open_s": round(opened, 2),
            **{name: percentiles(times) for name, times in seconds.items()}}


def embedding_rates(seed: int, batched: int, single: int) -> dict:
    encoder = load_text_encoder(text_model_identity(""))
    captions = synthetic_captions(batched, seed + 1)
    encoder.embed(captions[:EMBED_BATCH])  # warm up
    started = time.perf_counter()
    encoder.embed(captions)
    batched_rate = batched / (time.perf_counter() - started)
    started = time.perf_counter()
    for caption in captions[:single]:
        encoder.embed([caption])
    single_rate = single / (time.perf_counter() - started)
    return {"batch": EMBED_BATCH, "batched_captions_per_s": round(batched_rate, 1),
            "one_at_a_time_captions_per_s": round(single_rate, 1), "ratio": round(batched_rate / single_rate, 2),
            "mean_words": round(float(np.mean([len(c.split()) for c in captions])), 1)}


def table(rows: list[dict], rates: dict) -> list[str]:
    lines = [("| captions | index | build s | build captions/s | open s | search p50 / p99 ms | of which embedding "
              "p50 | FAISS p50 / p99 ms | POST /v1/search p50 / p99 ms |"), "|" + "---|" * 9]
    for row in rows:
        lines.append(f"| {row['captions']:,} | {row['index']} | {row.get('build_s', '-')} | "
                     f"{row.get('build_captions_per_s', '-')} | {row['open_s']} | "
                     f"{row['search']['p50_ms']} / {row['search']['p99_ms']} | {row['embed_query']['p50_ms']} | "
                     f"{row['faiss']['p50_ms']} / {row['faiss']['p99_ms']} | "
                     f"{row['http']['p50_ms']} / {row['http']['p99_ms']} |")
    lines.append(f"\nembedding ({rates['mean_words']} words a caption): {rates['batched_captions_per_s']} captions/s in "
                 f"batches of {rates['batch']}, {rates['one_at_a_time_captions_per_s']} one at a time "
                 f"({rates['ratio']}x)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="Collection sizes, comma-separated")
    parser.add_argument("--work", default="/tmp/text-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=200, help="Single queries timed per size")
    parser.add_argument("--embed-batched", type=int, default=2048, help="Captions embedded in batches")
    parser.add_argument("--embed-single", type=int, default=256, help="Captions embedded one at a time")
    parser.add_argument("--reuse", action="store_true", help="Measure queries on the indexes an earlier run built "
                                                             "in --work (no build)")
    args = parser.parse_args()
    work = Path(args.work)
    rates = embedding_rates(args.seed, args.embed_batched, args.embed_single)
    print(json.dumps({"embedding": rates}), flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        built = {} if args.reuse else build_size(work, n, args.seed)
        rows.append({**measure_queries(work, n, args.seed, args.queries), **built})
        print(json.dumps(rows[-1]), flush=True)
    print("\n".join(table(rows, rates)))


if __name__ == "__main__":
    main()
