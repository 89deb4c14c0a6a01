"""Index encoding on Ray: the quantiser is trained once by the driver; actors (one CPU each, through the
distributor, mullama/distribute.py) encode groups of partitions in parallel, each into its own segment and
its own copy of the empty trained index; the driver merges them in partition order (docs/knn.md,
infra/README.md for sizing). A group whose actor is lost is encoded again under the same segment name; a node
that joins mid-run gets an actor of its own while groups remain."""

from __future__ import annotations

import os
from typing import Any

import ray
from tqdm import tqdm

from mullama.distribute import Retries, WorkerFactory, WorkerPool, last_line
from mullama.errors import MullamaError
from mullama.knn.config import IndexBuildConfig
from mullama.knn.recipes import Recipe
from mullama.knn.segment import encode_segment
from mullama.raycluster import connect
from mullama.store.feature_store import FeatureStore
from mullama.store.schema import ClipRecord

RAY_ATTEMPTS = 3  # as Ray's own retries of a lost task (max_retries=2)


def _groups(todo: list[str], fresh: dict[str, list[ClipRecord]], tasks: int) -> list[list[str]]:
    """Consecutive runs of partitions with about equal clip counts (order kept: rows follow commit order)."""
    total = sum(len(fresh[p]) for p in todo)
    share = max(1, -(-total // max(1, tasks)))
    groups: list[list[str]] = [[]]
    count = 0
    for partition in todo:
        if count >= share and groups[-1]:
            groups.append([])
            count = 0
        groups[-1].append(partition)
        count += len(fresh[partition])
    return [g for g in groups if g]


class SegmentEncoder:
    """Encodes groups of partitions of one store into segments of one index folder (a Ray actor)."""

    def __init__(self, store_url: str, folder_url: str, recipe: dict[str, Any]):
        self.store_url, self.folder_url, self.recipe = store_url, folder_url, recipe
        self.store: FeatureStore | None = None  # opened by the first task, then kept: one read of the catalog

    def encode(self, empty: bytes | None, clip_ids: list[str], name: str,
               captions: dict[str, list[str]] | None) -> tuple[dict[str, Any], bytes | None]:
        if self.store is None:
            self.store = FeatureStore.open(self.store_url)
        return encode_segment(self.store, self.folder_url, self.recipe, empty, clip_ids, name, captions, threads=1)


def encode_on_ray(config: IndexBuildConfig, store_url: str, folder_url: str, recipe: Recipe, empty: bytes | None,
                  todo: list[str], fresh: dict[str, list[ClipRecord]], captions: dict[str, list[str]] | None,
                  generation: str) -> list[tuple[dict[str, Any], bytes | None]]:
    """One segment per group of partitions, in partition order (`captions`: a text index's, by clip)."""
    connect(config.ray)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 2)))
    tasks = config.ray_tasks or max(1, cpus // 2)
    groups = [[r.clip_id for p in group for r in fresh[p]] for group in _groups(todo, fresh, tasks)]
    # no more actors than the cluster's CPUs: the rest would wait for room the first ones never give back
    factory = WorkerFactory(SegmentEncoder, (store_url, folder_url, recipe.to_dict()), min(len(groups), cpus),
                            cpus=1.0, name_prefix=f"mullama-index-{os.getpid()}", label="index")
    empty_ref = ray.put(empty)
    results: dict[int, tuple[dict[str, Any], bytes | None]] = {}
    with tqdm(total=len(groups), unit="task", desc="index: encode on Ray", disable=not config.progress,
              dynamic_ncols=True) as bar, WorkerPool(factory) as pool:
        for done in pool.run(range(len(groups)), lambda actor, n: actor.encode.remote(
                                 empty_ref, groups[n], f"{generation}-{n:04d}",
                                 {c: captions[c] for c in groups[n]} if captions is not None else None),
                             Retries(RAY_ATTEMPTS), describe=lambda n: f"segment {generation}-{n:04d}"):
            if done.error is not None:
                raise MullamaError(f"a Ray index task failed: {last_line(done.error)}; nothing was committed, "
                                   "run the build again")
            results[done.task] = done.result
            bar.update(1)
    return [results[n] for n in range(len(groups))]
