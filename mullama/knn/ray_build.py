"""Index encoding on Ray: the quantiser is trained once by the driver; tasks encode groups of partitions
in parallel, each into its own segment and its own copy of the empty trained index; the driver merges
them in partition order (docs/knn.md, infra/README.md for sizing)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from mullama.errors import MullamaError
from mullama.knn.config import IndexBuildConfig
from mullama.knn.recipes import Recipe
from mullama.knn.segment import encode_segment
from mullama.raycluster import connect
from mullama.store.schema import ClipRecord


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


def encode_on_ray(config: IndexBuildConfig, store_url: str, folder_url: str, recipe: Recipe, empty: bytes | None,
                  todo: list[str], fresh: dict[str, list[ClipRecord]],
                  generation: str) -> list[tuple[dict[str, Any], bytes | None]]:
    import ray

    connect(config.ray)
    tasks = config.ray_tasks or max(1, int(ray.cluster_resources().get("CPU", 2)) // 2)
    groups = _groups(todo, fresh, tasks)
    remote = ray.remote(num_cpus=1, max_retries=2)(encode_segment)
    empty_ref = ray.put(empty)
    refs = [remote.remote(store_url, folder_url, recipe.to_dict(), empty_ref, group, f"{generation}-{n:04d}", 1)
            for n, group in enumerate(groups)]
    results: dict[Any, tuple[dict[str, Any], bytes | None]] = {}
    with tqdm(total=len(refs), unit="task", desc="index: encode on Ray", disable=not config.progress,
              dynamic_ncols=True) as bar:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                results[ready[0]] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                raise MullamaError(f"a Ray index task failed: {str(exc).splitlines()[-1]}; nothing was committed, "
                                   "run the build again") from None
            bar.update(1)
    return [results[ref] for ref in refs]
