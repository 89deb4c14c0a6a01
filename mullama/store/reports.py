"""The store commands (`store info`, `verify`, `gc`): each returns a report that formats itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mullama.formatting import human_bytes
from mullama.store.config import StoreGcConfig, StoreInfoConfig, StoreVerifyConfig
from mullama.store.feature_store import FeatureStore


@dataclass
class InfoReport:
    info: dict[str, Any]
    as_json: bool = False
    exit_code: int = 0

    def lines(self) -> list[str]:
        info = self.info
        if self.as_json:
            return [json.dumps(info, indent=2)]
        encoder, settings = info["encoder"], info["settings"]
        modality = encoder.get("modality", "audio")
        audio = modality == "audio"
        lines = [
            f"store: {info['url']} (schema {info['schema_version']}, written by mullama {info['written_by']})",
            f"encoder: {encoder['name']} ({encoder.get('kind', 'mert')}, {modality})  stack {encoder['hidden_states']} "
            f"x {encoder['hidden_size']}  " + (f"{encoder['sample_rate']} Hz  " if audio else "")
            + f"weights {encoder['weights_hash'][:12]}"
            + (f"  from {encoder['hub_id']}@{encoder.get('hub_commit', '')[:12]}" if encoder.get("hub_id") else ""),
            (f"windows: {settings['window_seconds']} s (min trailing {settings['min_window_seconds']} s), "
             if audio else f"per item: {settings['pooling']}, ") + f"dtype {settings['dtype']}",
            f"{'clips' if audio else modality + 's'}: {info['clips']} ok, {info['failed_clips']} failed"
            + (f"; windows: {info['windows']}; audio: {info['audio_hours']} h" if audio else
               f"; {info['audio_hours']} h in all" if modality == "video" else ""),
            f"partitions: {info['partitions']} committed, {info['uncommitted_partitions']} uncommitted; "
            f"size: {human_bytes(info['size_bytes'])}",
        ]
        if info["failure_reasons"]:
            lines.append("failure reasons: " + ", ".join(f"{k} {v}" for k, v in info["failure_reasons"].items()))
        lines += [f"  {row['clip_id']}: {row['reason']}" for row in info.get("failed", [])]
        return lines


def store_info(config: StoreInfoConfig) -> InfoReport:
    store = FeatureStore.open(config.store)
    info = store.info()
    if config.failures:
        info["failed"] = [{"clip_id": r.clip_id, "source": r.source, "reason": r.reason} for r in store.failures()]
    return InfoReport(info, config.json)


@dataclass
class VerifyReport:
    url: str
    problems: list[str]
    partitions: int
    clips: int

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def lines(self) -> list[str]:
        if not self.problems:
            return [f"ok: {self.partitions} partitions, {self.clips} clips match their commit checksums"]
        return [f"CORRUPT {problem}" for problem in self.problems] + [f"{len(self.problems)} problem(s) in {self.url}"]


def store_verify(config: StoreVerifyConfig) -> VerifyReport:
    store = FeatureStore.open(config.store, strict=False)
    return VerifyReport(config.store, store.verify(), len(store.commits()), len(store))


@dataclass
class GcReport:
    removed: list[str]
    exit_code: int = 0

    def lines(self) -> list[str]:
        return [f"removed {len(self.removed)} uncommitted partition(s)"]


def store_gc(config: StoreGcConfig) -> GcReport:
    return GcReport(FeatureStore.open(config.store).remove_uncommitted(None if config.min_age < 0 else config.min_age))
