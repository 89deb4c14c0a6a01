"""`mullama index query`: neighbours of a stored clip, an audio file, a batch of clip ids, or words."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mullama.config import validate
from mullama.encoder_identity import MERT
from mullama.errors import MullamaError
from mullama.extract.query_track import QueryTrack
from mullama.knn.clip_index import ClipIndex, Neighbour
from mullama.knn.config import IndexQueryConfig
from mullama.store.feature_store import FeatureStore
from mullama.store.schema import StoreSettings


@dataclass
class QueryReport:
    answers: list[tuple[str, list[Neighbour]]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (query, why)
    warnings: list[str] = field(default_factory=list)
    as_json: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def lines(self) -> list[str]:
        if self.as_json:
            out = [json.dumps({"query": q, "neighbours": [n.to_dict() for n in found]}) for q, found in self.answers]
            return out + [json.dumps({"query": q, "error": why}) for q, why in self.failures]
        lines = [f"warning: {w}" for w in self.warnings]
        for query, found in self.answers:
            lines.append(f"{query}:")
            for rank, n in enumerate(found, 1):
                lines.append(f"  {rank:>3}. {n.score:.4f}  {n.clip_id}  ({n.duration:.1f} s, {n.source})")
                lines += [f"         {caption}" for caption in n.captions]
        return lines + [f"failed: {q}: {why}" for q, why in self.failures]


def _store_for(index: ClipIndex) -> FeatureStore | None:
    """The store the index describes, when it can be opened (its catalog checks staleness)."""
    url = index.metadata.store.get("url", "")
    try:
        return FeatureStore.open(url) if url else None
    except MullamaError:
        return None


def run_query(config: IndexQueryConfig) -> QueryReport:
    validate(config)
    given = [name for name in ("clip", "audio", "batch", "text") if getattr(config, name)]
    if len(given) != 1:
        raise MullamaError("give exactly one of --clip, --audio, --batch or --text")
    if config.audio and not config.mert:
        raise MullamaError("--audio needs --mert: the MERT folder the index's store was extracted with")
    batch_ids = _read_batch(config.batch) if config.batch else []
    index = ClipIndex.open(config.index, config.name)
    report = QueryReport(as_json=config.json, warnings=index.home_store_warnings())
    store = _store_for(index)
    if store is not None:
        report.warnings += index.check_store(store)
    settings = {"nprobe": config.nprobe} if config.nprobe else {}
    if config.audio:
        report.answers.append((config.audio, _audio_neighbours(index, config, settings)))
        return report
    if config.text:
        report.answers.append((config.text, index.search(texts=[config.text], text_model=config.text_model,
                                                         k=config.k, **settings)[0]))
        return report
    for clip_id in batch_ids or [config.clip]:
        if clip_id not in index.rows_by_clip:
            if not batch_ids:
                index.row_of(clip_id)  # raises the one-line error
            report.failures.append((clip_id, "not in the index"))
            continue
        report.answers.append((clip_id, index.search(clip_ids=[clip_id], k=config.k, **settings)[0]))
    return report


def _read_batch(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise MullamaError(f"--batch file {path} does not exist")
    try:
        ids = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise MullamaError(f"--batch file {path} is not UTF-8 text; write one clip id per line") from None
    if not ids:
        raise MullamaError(f"--batch file {path} holds no clip ids; write one per line")
    return ids


def _audio_neighbours(index: ClipIndex, config: IndexQueryConfig, settings: dict[str, Any]) -> list[Neighbour]:
    """The file's stack as the index's store holds its clips (the encoder refused before its weights load)."""
    built = StoreSettings.from_dict(index.metadata.store["settings"])
    track = QueryTrack.open(MERT, config.mert, index.check_encoder, built, config.device)
    return index.search(stacks=track.stack(config.audio)[None], encoder=track.identity, k=config.k, **settings)[0]
