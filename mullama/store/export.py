"""`mullama store export-shards`: a feature store and its QA pairs -> training shards (format: shards.py).

QA pairs are grouped by clip and shuffled with a seed; text-only instruction items (Alpaca-style)
become samples carrying the store's cached stack of 1 s of silence. QA pairs whose clip is missing
from the store or failed extraction are counted and listed, never dropped silently.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from mullama import __version__
from mullama.config import validate
from mullama.data.jsonfile import read_json_list
from mullama.data.musicqa import iter_musicqa
from mullama.durable import owned_folder
from mullama.errors import MullamaError
from mullama.outputs import refuse_output_over_inputs
from mullama.store.config import ExportShardsConfig
from mullama.store.feature_store import FeatureStore
from mullama.store.shards import MANIFEST, ShardWriter, clip_sample

# Stacks read at once. The samples are shuffled across the whole store, so a batch holds few rows of each
# partition; a larger batch gathers more rows per partition into one contiguous read (FeatureStore.get).
READ_BYTES = 64 << 20
LOCK = ".export.lock"  # flock-ed by the export writing into OUT


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
    exit_code: int = 0

    def lines(self) -> list[str]:
        lines = [f"wrote {self.shards} shard(s) to {self.out}: {self.clips} clips, {self.pairs} QA pairs, "
                 f"{self.text_items} text-only items"]
        if self.missing_clips or self.failed_clips:
            lines.append(f"skipped {self.dropped_pairs} QA pairs: {len(self.missing_clips)} clip(s) not in the "
                         f"store (e.g. {', '.join(self.missing_clips[:3]) or '-'}), {len(self.failed_clips)} failed "
                         f"in extraction (e.g. {', '.join(self.failed_clips[:3]) or '-'}); listed in {MANIFEST}")
        return lines


@dataclass
class _Item:
    key_source: str  # clip id, or "text:<n>" for text-only items
    pairs: list[tuple[str, str]]  # (question, answer): a tuple is a quarter of a dict's memory, 3 M of them at 10^6
    text_only: bool = False


def read_text_only(path: str | Path) -> list[tuple[str, str]]:
    """Alpaca records -> question/answer pairs (the input, when present, follows the instruction)."""
    records = read_json_list(path, "text-only file")
    pairs = []
    for number, record in enumerate(records):
        try:
            question, answer = str(record["instruction"]), str(record["output"])
        except (KeyError, TypeError):
            raise MullamaError(f"{path}: record {number} needs 'instruction' and 'output'") from None
        extra = str(record.get("input") or "").strip()
        pairs.append((f"{question}\n\n{extra}" if extra else question, answer))
    return pairs


def plan_items(store: FeatureStore, config: ExportShardsConfig) -> tuple[list[_Item], list[str], list[str], int]:
    """Group QA pairs by clip; clips absent from or failed in the store are counted, not dropped silently."""
    if not config.qa and not config.text_only:
        raise MullamaError("give at least one --qa MusicQA file (or --text-only file) to export")
    by_clip: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for path in config.qa:
        for pair in iter_musicqa(path):
            by_clip[pair.audio_name].append((pair.question, pair.answer))
    failed = {r.clip_id for r in store.failures()}
    missing = sorted(c for c in by_clip if c not in store and c not in failed)
    failed_here = sorted(c for c in by_clip if c in failed)
    dropped = sum(len(by_clip[c]) for c in missing + failed_here)
    items = [_Item(c, by_clip[c]) for c in sorted(by_clip) if c in store]
    text_pairs = [pair for path in config.text_only for pair in read_text_only(path)]
    items += [_Item(f"text:{n}", [pair], text_only=True) for n, pair in enumerate(text_pairs)]
    random.Random(config.seed).shuffle(items)
    return items, missing, failed_here, dropped


def _stacks(store: FeatureStore, items: list[_Item]) -> Iterator[tuple[_Item, np.ndarray]]:
    silence = store.silence_stack() if any(i.text_only for i in items) else None
    batch = max(1, READ_BYTES // (int(np.prod(store.stack_shape)) * store.dtype.itemsize))
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        clip_ids = [i.key_source for i in chunk if not i.text_only]
        stacks = iter(store.get(clip_ids)) if clip_ids else iter(())
        for item in chunk:
            yield item, (silence if item.text_only else next(stacks))


def _nothing_matched(config: ExportShardsConfig, missing: list[str], failed: list[str], dropped: int) -> MullamaError:
    """An export of zero samples is a mistake (usually audio_name values that are not the store's clip ids)."""
    if not dropped:
        return MullamaError(f"the --qa and --text-only files ({', '.join(config.qa + config.text_only)}) hold no QA "
                            "pair or text item to export")
    example = f"e.g. {missing[0]!r} is not in the store" if missing else f"e.g. {failed[0]!r} failed in extraction"
    return MullamaError(f"no QA pair of --qa matches a clip of the store {config.store}: all {dropped} pairs skipped "
                        f"({len(missing)} clip(s) not in the store, {len(failed)} failed; {example}); audio_name "
                        "values must be the store's clip ids (see `mullama store info --json`)")


def export_shards(config: ExportShardsConfig) -> ExportReport:
    """Plan everything, write the new shards aside, and only then replace OUT's export (see ShardWriter)."""
    validate(config)
    refuse_output_over_inputs(config.out, {"STORE": config.store, "--qa": config.qa, "--text-only": config.text_only})
    store = FeatureStore.open(config.store)
    out = Path(config.out)
    with _cycle_collector_paused():
        items, missing, failed, dropped = plan_items(store, config)
        if not items:
            raise _nothing_matched(config, missing, failed, dropped)
        busy = f"another export is writing into {out}; wait for it to end or choose another --out"
        with owned_folder(out, LOCK, "into --out", busy):
            if (out / MANIFEST).exists() and not config.overwrite:
                raise MullamaError(f"{out} already holds an export ({MANIFEST}); use --overwrite or another folder")
            return _export(store, config, out, items, missing, failed, dropped)


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """An export builds millions of dicts and lists without reference cycles (3 M QA pairs at 10^6 clips), which
    Python's cycle collector would traverse again and again for nothing; refcounting frees them all the same.
    At 10^6 clips the collector cost 62 s of the export's 286 s of CPU, and pausing it left the peak memory
    unchanged (3,887 MB; BENCHMARKS.md, "Scale")."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _export(store: FeatureStore, config: ExportShardsConfig, out: Path, items: list[_Item], missing: list[str],
            failed: list[str], dropped: int) -> ExportReport:
    """Write the staged shards and swap them in; OUT's lock is held."""
    sink = ShardWriter(out, int(config.shard_mb * 1e6))
    try:
        bar = tqdm(total=len(items), unit="clip", desc="export-shards", disable=not config.progress,
                   dynamic_ncols=True)
        with bar:
            for number, (item, stack) in enumerate(_stacks(store, items)):
                meta = {"clip_id": None if item.text_only else item.key_source, "text_only": item.text_only,
                        "qa": [{"question": question, "answer": answer} for question, answer in item.pairs]}
                if not item.text_only:
                    record = store.record(item.key_source)
                    meta.update(source=record.source, duration=record.duration, windows=record.windows)
                windows = store.windows(item.key_source) if config.windows and not item.text_only else None
                sink.write(clip_sample(number, stack, meta, windows), len(item.pairs), item.text_only)
                bar.update(1)
        sink.commit({
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
            "skipped": {"missing_clips": len(missing), "failed_clips": len(failed), "pairs": dropped,
                        "missing_examples": missing[:20], "failed_examples": failed[:20]},
        })
    except BaseException:  # Ctrl-C too: the staged shards go; the old export stays whole, or reads as unfinished
        sink.discard()  # (no manifest) when the failure came in the middle of the swap
        raise
    totals = sink.totals()
    return ExportReport(out, len(sink.shards), totals["clips"], totals["pairs"], totals["text_items"], missing,
                        failed, dropped)
