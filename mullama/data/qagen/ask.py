"""One batch of clips through both requests, each retried for the clips that still fail (used locally and by
Ray actors alike)."""

from __future__ import annotations

import zlib
from typing import Any, Callable

from mullama.data.qagen.instructions import REQUESTS, Bounds, FailedRequest, Pair
from mullama.data.qagen.sources import SourceClip


def pair_dicts(pairs: list[Pair]) -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in pairs]


def _seed(seed: int, *parts: object) -> int:
    return zlib.crc32("/".join(map(str, (seed, *parts))).encode()) & 0x7FFFFFFF


def ask_batch(complete: Callable[[list[str], float, int], list[str | FailedRequest]], clips: list[SourceClip],
              seed: int, max_attempts: int, bounds: Bounds) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both requests for each clip, each retried (only for the clips that still fail) up to max_attempts;
    returns (qa rows, failure rows)."""
    results: dict[str, dict[str, Any]] = {clip.clip_id: {} for clip in clips}
    failures: dict[str, dict[str, Any]] = {}
    for request in REQUESTS:
        pending = [clip for clip in clips if clip.clip_id not in failures]
        last: dict[str, tuple[str, str]] = {}
        for attempt in range(1, max_attempts + 1):
            if not pending:
                break
            outputs = complete([request.prompt(clip) for clip in pending], request.temperature,
                               _seed(seed, request.name, attempt, pending[0].clip_id))
            still = []
            for clip, output in zip(pending, outputs):
                pairs, problem = request.check(output, bounds)
                if problem:
                    last[clip.clip_id] = (problem, output if isinstance(output, str) else "")
                    still.append(clip)
                else:
                    results[clip.clip_id][request.name] = (pair_dicts(pairs), attempt)
            pending = still
        for clip in pending:
            problem, output = last[clip.clip_id]
            failures[clip.clip_id] = {"clip_id": clip.clip_id, "request": request.name,
                                      "reason": f"{request.name}: {problem} (after {max_attempts} attempts)",
                                      "last_output": output[:2000]}
    rows = [clip_row(clip, {name: pairs for name, (pairs, _) in results[clip.clip_id].items()},
                 {name: attempts for name, (_, attempts) in results[clip.clip_id].items()})
            for clip in clips if clip.clip_id not in failures]
    return rows, list(failures.values())


def clip_row(clip: SourceClip, pairs: dict[str, list[dict[str, str]]], attempts: dict[str, int]) -> dict[str, Any]:
    return {"clip_id": clip.clip_id, "kind": clip.kind, "source": clip.origin, "description": pairs["description"],
            "open": pairs["open"], "attempts": attempts}
