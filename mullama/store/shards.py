"""Export a feature store and its QA pairs as WebDataset shards for training.

One sample per clip: `<key>.npy` (the clip stack, float16), optionally `<key>.windows.npy`, and
`<key>.json` (clip id and every QA pair of the clip), so a trainer reads a clip's features once
however many questions it has. Text-only instruction items (Alpaca-style) become samples carrying
the store's cached stack of 1 s of silence. `shards.json`, written last, lists the shards with
their counts and the store's identity; a folder without it is an unfinished export.
"""

from __future__ import annotations

import collections
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from tqdm import tqdm

from mullama import __version__
from mullama.data.musicqa import read_musicqa
from mullama.durable import write_atomic
from mullama.errors import MullamaError
from mullama.store.config import ExportShardsConfig
from mullama.store.feature_store import FeatureStore

MANIFEST = "shards.json"
READ_BATCH = 256


@dataclass
class ExportReport:
    out: Path
    shards: int
    clips: int
    pairs: int
    text_items: int
    missing_clips: list[str]
    failed_clips: list[str]
    dropped_pairs: int


@dataclass
class _Item:
    key_source: str  # clip id, or "text:<n>" for text-only items
    pairs: list[dict[str, str]]
    text_only: bool = False


def read_text_only(path: str | Path) -> list[dict[str, str]]:
    """Alpaca records -> question/answer pairs (the input, when present, follows the instruction)."""
    try:
        records = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MullamaError(f"text-only file {path} does not exist") from None
    except ValueError as exc:
        raise MullamaError(f"{path} is not valid JSON ({exc})") from None
    pairs = []
    for number, record in enumerate(records):
        try:
            question, answer = str(record["instruction"]), str(record["output"])
        except (KeyError, TypeError):
            raise MullamaError(f"{path}: record {number} needs 'instruction' and 'output'") from None
        extra = str(record.get("input") or "").strip()
        pairs.append({"question": f"{question}\n\n{extra}" if extra else question, "answer": answer})
    return pairs


def plan_items(store: FeatureStore, config: ExportShardsConfig) -> tuple[list[_Item], list[str], list[str], int]:
    """Group QA pairs by clip; clips absent from or failed in the store are counted, not dropped silently."""
    if not config.qa and not config.text_only:
        raise MullamaError("give at least one --qa MusicQA file (or --text-only file) to export")
    by_clip: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for path in config.qa:
        for pair in read_musicqa(path):
            by_clip[pair.audio_name].append({"question": pair.question, "answer": pair.answer})
    failed = {r.clip_id for r in store.failures()}
    missing = sorted(c for c in by_clip if c not in store and c not in failed)
    failed_here = sorted(c for c in by_clip if c in failed)
    dropped = sum(len(by_clip[c]) for c in missing + failed_here)
    items = [_Item(c, by_clip[c]) for c in sorted(by_clip) if c in store]
    text_pairs = [pair for path in config.text_only for pair in read_text_only(path)]
    items += [_Item(f"text:{n}", [pair], text_only=True) for n, pair in enumerate(text_pairs)]
    random.Random(config.seed).shuffle(items)
    return items, missing, failed_here, dropped


class _ShardSink:
    """Rolling tar writer: a shard is written under a temporary name and renamed once closed."""

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._handle = None

    def _open(self) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        self._handle = open(self.out / f".{name}.tmp", "wb")
        self._writer = wds.TarWriter(self._handle, mtime=0.0)  # fixed mtime: identical reruns, identical bytes
        self.shards.append({"name": name, "clips": 0, "pairs": 0, "text_items": 0})

    def write(self, sample: dict[str, Any], pairs: int, text_only: bool) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        shard = self.shards[-1]
        shard["text_items" if text_only else "clips"] += 1
        shard["pairs"] += pairs
        if self._handle.tell() >= self.max_bytes:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            name = self.shards[-1]["name"]
            os.replace(self.out / f".{name}.tmp", self.out / name)
            self._writer = self._handle = None


def _stacks(store: FeatureStore, items: list[_Item]) -> Iterator[tuple[_Item, np.ndarray]]:
    silence = store.silence_stack() if any(i.text_only for i in items) else None
    for start in range(0, len(items), READ_BATCH):
        chunk = items[start:start + READ_BATCH]
        clip_ids = [i.key_source for i in chunk if not i.text_only]
        stacks = iter(store.get(clip_ids)) if clip_ids else iter(())
        for item in chunk:
            yield item, (silence if item.text_only else next(stacks))


def export_shards(config: ExportShardsConfig) -> ExportReport:
    store = FeatureStore.open(config.store)
    out = Path(config.out)
    if (out / MANIFEST).exists() and not config.overwrite:
        raise MullamaError(f"{out} already holds an export ({MANIFEST}); use --overwrite or another folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("shard-*.tar")) + list(out.glob(".shard-*.tmp")) + [out / MANIFEST]:
        stale.unlink(missing_ok=True)
    items, missing, failed, dropped = plan_items(store, config)
    sink = _ShardSink(out, int(config.shard_mb * 1e6))
    bar = tqdm(total=len(items), unit="clip", desc="export-shards", disable=not config.progress, dynamic_ncols=True)
    for number, (item, stack) in enumerate(_stacks(store, items)):
        meta = {"clip_id": None if item.text_only else item.key_source, "text_only": item.text_only,
                "qa": item.pairs}
        if not item.text_only:
            record = store.record(item.key_source)
            meta.update(source=record.source, duration=record.duration, windows=record.windows)
        sample = {"__key__": f"{number:09d}", "npy": np.asarray(stack, dtype=np.float16), "json": meta}
        if config.windows and not item.text_only:
            sample["windows.npy"] = store.windows(item.key_source)
        sink.write(sample, len(item.pairs), item.text_only)
        bar.update(1)
    sink.close()
    bar.close()
    report = ExportReport(out, len(sink.shards), sum(s["clips"] for s in sink.shards),
                          sum(s["pairs"] for s in sink.shards), sum(s["text_items"] for s in sink.shards),
                          missing, failed, dropped)
    manifest = {
        "format": "mullama-shards/1",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mullama_version": __version__,
        "store": store.location.url,
        "encoder": store.encoder.to_dict(),
        "settings": store.settings.__dict__,
        "stack_shape": list(store.stack_shape),
        "seed": config.seed,
        "qa_files": [str(p) for p in config.qa],
        "text_only_files": [str(p) for p in config.text_only],
        "windows": config.windows,
        "shards": sink.shards,
        "totals": {"clips": report.clips, "pairs": report.pairs, "text_items": report.text_items},
        "skipped": {"missing_clips": len(missing), "failed_clips": len(failed), "pairs": dropped,
                    "missing_examples": missing[:20], "failed_examples": failed[:20]},
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())  # last: marks the export whole
    return report
