"""The index folder (docs/knn.md, "Index folder"): FAISS file, row -> clip map, vectors, and the metadata
that commits them.

    index.json                          written last: names the files of the current generation
    index-<generation>.faiss            the FAISS index (rows numbered 0..n-1 in segment order)
    segments/<segment>/vectors.npy      float16 (rows, dim): re-ranking and kNN-mix prototypes
    segments/<segment>/clips.jsonl      one line per row: clip_id, source, duration, partition

A build or an update writes new files under new names and then replaces index.json, so a reader (or a
kill -9 at any step) sees the previous generation or the new one whole, never a mix. Files a replaced
index.json named are deleted after the swap (a reader that read the replaced index.json and finds its files
gone reads the new one and starts again: ClipIndex.open); files no index.json names are debris of a killed writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np

from mullama import __version__
from mullama.durable import publish, temporary_name
from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.knn.recipes import Recipe
from mullama.store.location import Location

FORMAT = "mullama-index"
FORMAT_VERSION = 1
METADATA = "index.json"
SEGMENTS = "segments"
INDEXES = "indexes"  # the folder of a store that holds its indexes by default


@dataclass
class Segment:
    """Rows added by one build step (a local build, an update, or one Ray task), in row order."""

    name: str
    rows: int
    files: dict[str, dict[str, Any]]  # key -> {"size", "sha256"}

    @property
    def vectors_key(self) -> str:
        return f"{SEGMENTS}/{self.name}/vectors.npy"

    @property
    def clips_key(self) -> str:
        return f"{SEGMENTS}/{self.name}/clips.jsonl"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "files": self.files}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Segment":
        return cls(str(data["name"]), int(data["rows"]), dict(data["files"]))


@dataclass
class IndexMetadata:
    """Everything index.json records: what was indexed, how, and which files hold it."""

    name: str
    store: dict[str, Any]  # url, created_at, encoder, settings
    recipe: Recipe
    dim: int
    factory: str
    search: dict[str, Any]  # nprobe / ef_search, shortlist, tuned recall
    build: dict[str, Any]  # memory budget, sample, seed, seconds...
    index_file: dict[str, Any]  # key, size, sha256
    partitions: list[str]
    segments: list[Segment]
    masked_rows: list[int] = field(default_factory=list)  # rows of clips re-extracted into a later partition
    created_at: str = ""
    updated_at: str = ""
    mullama_version: str = __version__
    faiss_version: str = faiss.__version__

    @property
    def rows(self) -> int:
        return sum(segment.rows for segment in self.segments)

    @property
    def encoder(self) -> EncoderIdentity:
        return EncoderIdentity.from_dict(self.store["encoder"])

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "store": self.store,
                "recipe": self.recipe.to_dict(), "dim": self.dim, "factory": self.factory, "search": self.search,
                "build": self.build, "index_file": self.index_file, "partitions": self.partitions,
                "segments": [s.to_dict() for s in self.segments], "masked_rows": self.masked_rows,
                "rows": self.rows, "created_at": self.created_at, "updated_at": self.updated_at,
                "mullama_version": self.mullama_version, "faiss_version": self.faiss_version}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "IndexMetadata":
        if data.get("format") != FORMAT:
            raise MullamaError(f"{where} is not a mullama index (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise MullamaError(f"{where} has index format {data.get('format_version')}; this mullama reads "
                               f"{FORMAT_VERSION}; rebuild it with `mullama index build`")
        try:
            return cls(name=data["name"], store=data["store"], recipe=Recipe.from_dict(data["recipe"]),
                       dim=int(data["dim"]), factory=data["factory"], search=dict(data["search"]),
                       build=dict(data["build"]), index_file=dict(data["index_file"]),
                       partitions=list(data["partitions"]), segments=[Segment.from_dict(s) for s in data["segments"]],
                       masked_rows=[int(r) for r in data.get("masked_rows", [])], created_at=data.get("created_at", ""),
                       updated_at=data.get("updated_at", ""), mullama_version=data.get("mullama_version", ""),
                       faiss_version=data.get("faiss_version", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise MullamaError(f"{where} is incomplete ({exc}); rebuild the index") from None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_generation() -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class IndexFolder:
    """One index folder, local or at an fsspec URL."""

    def __init__(self, url: str):
        self.location = Location(url)
        self.url = self.location.url

    def exists(self) -> bool:
        return self.location.exists(METADATA)

    def check_writable_path(self) -> None:
        if self.location.is_local and os.path.exists(self.location.root) and not os.path.isdir(self.location.root):
            raise MullamaError(f"index path {self.url} is a file, not a folder; choose another --out")

    # ----------------------------------------------------------------- reading
    def read_metadata(self) -> IndexMetadata:
        where = f"{self.url}/{METADATA}"
        try:
            data = json.loads(self.location.read_bytes(METADATA))
        except FileNotFoundError:
            raise MullamaError(f"{self.url} holds no index ({METADATA} is missing); build one with "
                               "`mullama index build`") from None
        except ValueError as exc:
            raise MullamaError(f"{where} is corrupted ({exc}); rebuild the index") from None
        if not isinstance(data, dict):
            raise MullamaError(f"{where} is corrupted (not a JSON object); rebuild the index")
        return IndexMetadata.from_dict(data, where)

    def _checked_bytes(self, key: str, expected: dict[str, Any]) -> bytes:
        try:
            data = self.location.read_bytes(key)
        except FileNotFoundError:
            raise MullamaError(f"{self.url}/{key} is missing; rebuild the index") from None
        if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise MullamaError(f"{self.url}/{key} is corrupted (it differs from the checksum in {METADATA}); "
                               "rebuild the index")
        return data

    def read_index(self, metadata: IndexMetadata) -> faiss.Index:
        data = self._checked_bytes(metadata.index_file["key"], metadata.index_file)
        try:
            return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise MullamaError(f"{self.url}/{metadata.index_file['key']} is not a readable FAISS index "
                               f"({str(exc).splitlines()[0]}); rebuild the index") from None

    def read_vectors(self, segment: Segment, dim: int) -> np.ndarray:
        """The segment's float16 vectors: memory-mapped on a local disk (read on demand, not held in RAM)."""
        key = segment.vectors_key
        expected = segment.files[key]
        try:
            if self.location.is_local:
                path = self.location.path(key)
                if os.path.getsize(path) != expected["size"]:
                    raise ValueError("its size differs from the one recorded")
                vectors = np.load(path, mmap_mode="r")
            else:
                vectors = np.load(io.BytesIO(self._checked_bytes(key, expected)))
        except FileNotFoundError:
            raise MullamaError(f"{self.url}/{key} is missing; rebuild the index") from None
        except ValueError as exc:
            raise MullamaError(f"{self.url}/{key} is corrupted ({exc}); rebuild the index") from None
        if vectors.shape != (segment.rows, dim) or vectors.dtype != np.float16:
            raise MullamaError(f"{self.url}/{key} holds {vectors.dtype} {vectors.shape}, {METADATA} says float16 "
                               f"({segment.rows}, {dim}); rebuild the index")
        return vectors

    def read_clips(self, segment: Segment) -> list[dict[str, Any]]:
        key = segment.clips_key
        data = self._checked_bytes(key, segment.files[key])
        return [json.loads(line) for line in data.decode().splitlines()]

    def verify(self, metadata: IndexMetadata) -> list[str]:
        """Every file missing or differing from its checksum."""
        problems = []
        wanted = {metadata.index_file["key"]: metadata.index_file}
        for segment in metadata.segments:
            wanted.update(segment.files)
        for key, expected in wanted.items():
            try:
                self._checked_bytes(key, expected)
            except MullamaError as exc:
                problems.append(str(exc))
        return problems

    # ----------------------------------------------------------------- writing
    def write_segment(self, name: str, vectors: np.ndarray, clips: list[dict[str, Any]]) -> Segment:
        """Write one segment's vectors (float16) and clip lines; returns it with its checksums."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        segment = Segment(name, int(vectors.shape[0]), {})
        segment.files[segment.vectors_key] = self.write_array(segment.vectors_key, vectors)
        lines = "".join(json.dumps(clip, ensure_ascii=False) + "\n" for clip in clips).encode()
        self.write_file(segment.clips_key, lines)
        segment.files[segment.clips_key] = digest(lines)
        return segment

    def write_array(self, key: str, array: np.ndarray) -> dict[str, Any]:
        """An .npy file; on a local disk streamed to a flushed temporary file (no second copy in memory)."""
        if not self.location.is_local:
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            self.write_file(key, buffer.getvalue())
            return digest(buffer.getvalue())
        path = self.location.path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = temporary_name(path)
            with open(temporary, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            hasher, size = hashlib.sha256(), 0
            with open(temporary, "rb") as handle:
                while block := handle.read(1 << 24):
                    hasher.update(block)
                    size += len(block)
            publish(temporary, path)
        except OSError as exc:
            raise MullamaError(f"cannot write {self.url}/{key}: {exc.strerror or exc}") from None
        return {"size": size, "sha256": hasher.hexdigest()}

    def write_file(self, key: str, data: bytes) -> None:
        try:
            self.location.write_atomic(key, data)
        except OSError as exc:
            raise MullamaError(f"cannot write {self.url}/{key}: {exc.strerror or exc}") from None

    def write_index(self, index: faiss.Index, generation: str) -> dict[str, Any]:
        data = faiss.serialize_index(index).tobytes()
        key = f"index-{generation}.faiss"
        self.write_file(key, data)
        return {"key": key, **digest(data)}

    def commit(self, metadata: IndexMetadata, previous: IndexMetadata | None) -> None:
        """Make `metadata` the index (files flushed first), then delete what it no longer names: on a local
        disk (where the builder holds the folder's lock) every other index file and segment, debris of killed
        builds included; elsewhere only what the previous index.json named."""
        if self.location.is_local:
            self.location.sync("")
        self.write_file(METADATA, json.dumps(metadata.to_dict(), indent=1).encode())
        keep_segments = {s.name for s in metadata.segments}
        if self.location.is_local:
            files = [name for name in self.location.list("") if name.startswith("index-") and name.endswith(".faiss")]
            segments = self.location.list(SEGMENTS)
        elif previous is not None:
            files, segments = [previous.index_file["key"]], [s.name for s in previous.segments]
        else:
            return
        for name in files:
            if name != metadata.index_file["key"]:
                self.location.remove(name)
        for name in segments:
            if name not in keep_segments:
                self.location.remove(f"{SEGMENTS}/{name}")
