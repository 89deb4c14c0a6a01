"""The feature store: a Zarr v3 group of committed partitions of per-window and per-clip stacks.

Layout (all under one root, local folder or fsspec URL):

    zarr.json                      group attributes "mullama": schema, encoder identity, settings
    partitions/<id>/clip_stacks    (clips, L+1, H)   one shard, one-row chunks
    partitions/<id>/window_stacks  (windows, L+1, H)   audio stores only (window_seconds > 0)
    partitions/<id>/window_offsets (clips + 1,)      windows of clip row r: offsets[r]:offsets[r+1]
    commits/<id>.json              catalog + checksums; written last, makes the partition visible
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import zarr

from mullama import __version__
from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.store.location import Location
from mullama.store.partition import COMMITS, PARTITIONS, ClipResult, commit_key, partition_key, write_partition
from mullama.store.schema import SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, ClipRecord, CommitRecord, StoreSettings
from mullama.store.writers import WRITERS, lease_seconds, read_leases

ATTRIBUTE_KEY = "mullama"
# Reserved clips the store keeps for downstream stages, hidden from clip_ids() and len().
RESERVED_PREFIX = "__mullama_"
SILENCE_CLIP = RESERVED_PREFIX + "silence_1s__"
# A single-row zarr read costs about 1 ms whatever the row (a shard-index lookup and a call through zarr's event
# loop) while a contiguous read moves about 1 GB/s, so reading this many bytes more in one slab costs about as
# much as one more single-row read (measured on 4 x 64 and 25 x 1024 float16 rows, December 2026).
SLAB_BYTES_PER_READ = 1 << 20


class StoreExists(MullamaError):
    """Another writer created the store first."""

    def __init__(self, url: str):
        super().__init__(f"{url} already holds a store or Zarr group; open it instead or choose a new path")


def check_store_path(location: Location) -> None:
    """A local store path must be a folder or not exist yet: a regular file there is a user mistake."""
    if location.is_local and os.path.exists(location.root) and not os.path.isdir(location.root):
        raise MullamaError(f"store path {location.url} is a file, not a folder; choose another --store")


def _index_commit(index: dict[str, ClipRecord], commit: CommitRecord) -> None:
    for record in commit.clips:
        index.pop(record.clip_id, None)  # a later commit (a retry) wins; keep commit order
        index[record.clip_id] = record


class FeatureStore:
    """Read committed stacks by clip id; hand out partition writers."""

    def __init__(self, location: Location, attributes: dict[str, Any], strict: bool = True):
        self.location = location
        self.strict = strict  # False (for verify): note unreadable commit records instead of failing
        self.unreadable_commits: dict[str, str] = {}
        self.attributes = attributes
        self.encoder = EncoderIdentity.from_dict(attributes["encoder"])
        self.settings = StoreSettings.from_dict(attributes["settings"])
        self._commits: list[CommitRecord] = []
        self._read_keys: set[str] = set()  # commit records already read: they never change
        self._lock = threading.RLock()
        self._index: dict[str, ClipRecord] = {}
        self._ok_clips: int | None = None  # len(self), counted once per change of the catalog
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self.refresh()

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(cls, url: str, encoder: EncoderIdentity, settings: StoreSettings) -> "FeatureStore":
        """A new store; its identity (zarr.json) is created exclusively, so of two writers creating the same
        store at once exactly one succeeds and the other finds the winner's identity (open_or_create)."""
        location = Location(url)
        check_store_path(location)
        attributes = {
            "schema_version": SCHEMA_VERSION,
            "encoder": encoder.to_dict(),
            "settings": settings.__dict__,
            "mullama_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "shape": [encoder.hidden_states, encoder.hidden_size],
        }
        metadata = {"zarr_format": 3, "node_type": "group", "attributes": {ATTRIBUTE_KEY: attributes}}
        try:
            created = location.create_exclusive("zarr.json", json.dumps(metadata, indent=1).encode())
            if created:
                zarr.open_group(store=location.zarr_store(), path=PARTITIONS, mode="a")
        except PermissionError:
            raise MullamaError(f"cannot create store {url}: permission denied; choose a writable --store") from None
        except OSError as exc:  # a parent that is a file, a read-only or missing filesystem...
            raise MullamaError(f"cannot create store {url}: {exc.strerror or exc}; choose another --store") from None
        if not created:
            raise StoreExists(url)
        return cls(location, attributes)

    @classmethod
    def open(cls, url: str, strict: bool = True) -> "FeatureStore":
        location = Location(url)
        if not location.exists("zarr.json"):
            raise MullamaError(f"{url} is not a mullama feature store (no zarr.json); create one with `mullama extract`")
        try:
            root = zarr.open_group(store=location.zarr_store(read_only=True), mode="r")
            attributes = dict(root.attrs[ATTRIBUTE_KEY])
        except KeyError:
            raise MullamaError(f"{url} is a Zarr group but not a mullama feature store (no 'mullama' attributes)") from None
        except MullamaError:  # a request that failed after its retries: its own line names it
            raise
        except Exception as exc:  # corrupt metadata
            raise MullamaError(f"{url}: cannot read the store's metadata ({exc}); run `mullama store verify`") from None
        if attributes.get("schema_version") != SCHEMA_VERSION:
            raise MullamaError(f"{url} has store schema {attributes.get('schema_version')}, this mullama reads "
                               f"schema {SCHEMA_VERSION}; use a matching mullama version")
        return cls(location, attributes, strict)

    @classmethod
    def open_or_create(cls, url: str, encoder: EncoderIdentity, settings: StoreSettings) -> "FeatureStore":
        """Open an existing store written by the same encoder and settings, or create a new one."""
        if not Location(url).exists("zarr.json"):
            try:
                return cls.create(url, encoder, settings)
            except StoreExists:  # another writer created it a moment ago: its identity decides
                pass
        store = cls.open(url)
        if not store.encoder.same_encoder(encoder):
            raise MullamaError(
                f"store {url} was written by encoder {store.encoder.name} (config {store.encoder.config_hash[:12]}, "
                f"weights {store.encoder.weights_hash[:12]}), not by {encoder.name} (config {encoder.config_hash[:12]}, "
                f"weights {encoder.weights_hash[:12]}); use a new store path for a different encoder")
        conflicts = store.effective_settings().conflicts(settings)
        if conflicts:
            raise MullamaError(f"store {url} was written with other settings ({'; '.join(conflicts)}); use the "
                               "store's settings or a new store path")
        return store

    # ----------------------------------------------------------------- catalog
    def refresh(self) -> None:
        """Read the commit records written since the last look (other writers may have committed). Commit
        records never change once written, so only new ones are read."""
        keys = [f"{COMMITS}/{name}" for name in self.location.list(COMMITS)
                if name.endswith(".json") and not name.startswith(".")]
        with self._lock:  # a writer thread may add its own commit meanwhile
            commits = list(self._commits)
            self.unreadable_commits = {}
            for key, data in self.location.read_many([key for key in keys if key not in self._read_keys]).items():
                try:
                    commits.append(CommitRecord.from_dict(json.loads(data)))
                    self._read_keys.add(key)
                except (ValueError, KeyError, TypeError) as exc:
                    if self.strict:
                        raise MullamaError(f"{self.location.url}: commit record {key} is unreadable ({exc}); "
                                           "run `mullama store verify`") from None
                    self.unreadable_commits[key] = str(exc)
            commits.sort(key=lambda c: (c.sequence, c.partition))
            index: dict[str, ClipRecord] = {}
            for commit in commits:
                self._read_keys.add(commit_key(commit.partition))
                _index_commit(index, commit)
            # Swapped in whole: readers that take no lock (a server's lookups) never see a half-built catalog.
            self._commits, self._index, self._ok_clips = commits, index, None

    def _add_commit(self, commit: CommitRecord) -> None:
        with self._lock:
            self._read_keys.add(commit_key(commit.partition))
            self._commits.append(commit)
            _index_commit(self._index, commit)
            self._ok_clips = None

    def effective_settings(self) -> StoreSettings:
        """The store's settings; a store made before precision was recorded takes the precision of its first
        commit that names one, so that it, too, never mixes precisions from then on."""
        if self.settings.precision:
            return self.settings
        with self._lock:
            stamped = [c.settings["precision"] for c in self._commits if c.settings and c.settings.get("precision")]
        return dataclasses.replace(self.settings, precision=stamped[0]) if stamped else self.settings

    @property
    def stack_shape(self) -> tuple[int, int]:
        return self.encoder.stack_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.settings.dtype)

    def records(self) -> list[ClipRecord]:
        """Latest catalog row of every clip, ok and failed, in commit order (reserved clips excluded)."""
        return [r for r in self._index.values() if not r.clip_id.startswith(RESERVED_PREFIX)]

    def records_by_id(self) -> dict[str, ClipRecord]:
        """Latest catalog row of every clip (reserved ones included), by clip id; do not modify."""
        return self._index

    def record(self, clip_id: str) -> ClipRecord:
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.location.url}") from None

    def clip_ids(self) -> list[str]:
        """Ids of the clips with stacks, in commit order."""
        return [r.clip_id for r in self._index.values()
                if r.status == STATUS_OK and not r.clip_id.startswith(RESERVED_PREFIX)]

    def failures(self) -> list[ClipRecord]:
        return [r for r in self._index.values() if r.status == STATUS_FAILED]

    def __len__(self) -> int:
        if self._ok_clips is None:  # a server's /health asks on every probe: count once per catalog change
            self._ok_clips = sum(1 for r in self._index.values()
                                 if r.status == STATUS_OK and not r.clip_id.startswith(RESERVED_PREFIX))
        return self._ok_clips

    @property
    def commit_count(self) -> int:
        """Commits read so far: it grows whenever the catalog changes, so callers can key caches on it."""
        return len(self._commits)

    def silence_stack(self) -> np.ndarray:
        """The stack of 1 s of silence, cached at extraction: the 'audio' of text-only training items."""
        if SILENCE_CLIP not in self:
            raise MullamaError(f"store {self.location.url} has no cached 1 s silence stack; run `mullama extract` "
                               "on it once more (it adds the stack without touching committed clips)")
        return self.get([SILENCE_CLIP])[0]

    def __contains__(self, clip_id: object) -> bool:
        record = self._index.get(clip_id)  # type: ignore[arg-type]
        return record is not None and record.status == STATUS_OK

    # ----------------------------------------------------------------- reading
    def _array(self, partition: str, name: str) -> zarr.Array:
        key = (partition, name)
        if key not in self._arrays:
            self._arrays[key] = zarr.open_array(store=self.location.zarr_store(read_only=True),
                                                path=f"{partition_key(partition)}/{name}", mode="r")
        return self._arrays[key]

    def _ok_record(self, clip_id: str) -> ClipRecord:
        record = self.record(clip_id)
        if record.status != STATUS_OK:
            raise KeyError(f"clip {clip_id!r} failed extraction ({record.reason}); it has no stacks")
        return record

    def get(self, clip_ids: Sequence[str]) -> np.ndarray:
        """Clip stacks (n, L+1, H) in the order asked, read partition by partition."""
        out = np.empty((len(clip_ids),) + self.stack_shape, dtype=self.dtype)
        row_bytes = out[:1].nbytes
        by_partition: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for position, clip_id in enumerate(clip_ids):
            record = self._ok_record(clip_id)
            by_partition[record.partition].append((record.row, position))
        for partition, pairs in by_partition.items():
            array = self._array(partition, "clip_stacks")
            rows = np.array([row for row, _ in pairs])
            positions = np.array([position for _, position in pairs])
            low, high = int(rows.min()), int(rows.max()) + 1
            if high - low <= 4 * len(rows) or (high - low) * row_bytes <= (len(rows) - 1) * SLAB_BYTES_PER_READ:
                # dense request, or rows so small that one contiguous read costs less than reading them one
                # by one: one read, then select
                out[positions] = array[low:high][rows - low]
            else:  # sparse: plain slices (zarr's fancy indexing is ~10x slower per row)
                for row, position in zip(rows, positions):
                    out[position] = array[int(row)]
        return out

    def windows(self, clip_id: str) -> np.ndarray:
        """Per-window stacks (windows, L+1, H) of one clip, in time order ((1, T, H) in an image or video store)."""
        record = self._ok_record(clip_id)
        if not self.settings.windowed:
            return self.get([clip_id])
        start = record.window_start
        return self._array(record.partition, "window_stacks")[start:start + record.windows]

    def iter_batches(self, batch_size: int = 256, clip_ids: Iterable[str] | None = None
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield (ids, stacks) batches; ids default to every clip in commit order."""
        ids = list(clip_ids) if clip_ids is not None else self.clip_ids()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            yield chunk, self.get(chunk)

    # ----------------------------------------------------------------- writing
    def new_partition_id(self, prefix: str = "p") -> str:
        return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:10]}"

    def write_partition(self, results: list[ClipResult], partition_id: str | None = None, *,
                        encoder: EncoderIdentity | None = None, precision: str = "",
                        before_commit: Callable[[], None] | None = None) -> CommitRecord:
        """Write and commit one partition. `encoder` and `precision` name what computed the stacks (default:
        the store's own); they are stamped into the commit record and must match the store's."""
        encoder = encoder or self.encoder
        if not self.encoder.same_encoder(encoder):
            raise MullamaError(f"encoder {encoder.name} did not write store {self.location.url} "
                               f"(its encoder is {self.encoder.name}); use a new store path")
        settings = dataclasses.replace(self.settings, precision=precision or self.settings.precision)
        conflicts = self.effective_settings().conflicts(settings)
        if conflicts:
            raise MullamaError(f"store {self.location.url}: {'; '.join(conflicts)}; use the store's settings")
        expected = self.stack_shape
        for result in results:
            if result.ok and tuple(result.window_stacks.shape[1:]) != expected:
                raise ValueError(f"clip {result.clip_id}: stack shape {result.window_stacks.shape[1:]} "
                                 f"does not match the store's {expected}")
        stamp = {"encoder": encoder.to_dict(), "settings": dataclasses.asdict(settings)}
        commit = write_partition(self.location, partition_id or self.new_partition_id(), results,
                                 self.settings.dtype, stamp, before_commit, windowed=self.settings.windowed)
        self._add_commit(commit)  # other writers' commits appear on refresh()
        return commit

    # ----------------------------------------------------------------- health
    def commits(self) -> list[CommitRecord]:
        return list(self._commits)

    def uncommitted_partitions(self) -> list[str]:
        committed = {c.partition for c in self._commits}
        return [name for name in self.location.folders(PARTITIONS)  # files there are zarr's own metadata
                if not name.startswith(".") and name not in committed]

    def remove_uncommitted(self, min_age: float | None = None) -> list[str]:
        """Delete partitions that no commit names and no live writer can still commit, and the leases of dead
        writers. A partition is kept while the lease of the run that writes it holds (its id starts with the
        run id), and while any of its files is younger than `min_age` (default: the lease length), a guard for
        writers whose lease could not be read."""
        min_age = lease_seconds() if min_age is None else min_age
        candidates = self.uncommitted_partitions()
        leases = read_leases(self.location)  # read after listing: a partition's writer leased before writing it
        now = time.time()
        live = [run_id for run_id, lease in leases.items() if lease.live(now)]
        removed = []
        for name in candidates:
            if any(name.startswith(f"{run_id}-") for run_id in live):
                continue
            modified = self.location.modified(partition_key(name))
            if modified is not None and now - modified < min_age:
                continue
            if self.location.exists(commit_key(name)):  # committed since the listing
                continue
            self.location.remove(partition_key(name))
            removed.append(name)
        for run_id in self.location.folders(WRITERS):
            if run_id in leases:
                if not leases[run_id].live(now):
                    self.location.remove(f"{WRITERS}/{run_id}")
                continue
            modified = self.location.modified(f"{WRITERS}/{run_id}")  # no readable lease: a writer's first
            if modified is None or now - modified >= min_age:  # moment, or debris of one killed long ago
                self.location.remove(f"{WRITERS}/{run_id}")
        return removed

    def verify(self) -> list[str]:
        """Every problem found: unreadable commit records, files missing or changed against the checksums
        taken at commit, and arrays whose shape or stored chunks disagree with their commit record."""
        problems = [f"{key}: unreadable commit record ({why})" for key, why in self.unreadable_commits.items()]
        for commit in self._commits:
            present = self.location.files_under(partition_key(commit.partition))
            damaged = False
            metadata: dict[str, bytes] = {}  # the arrays' zarr.json, checked against the commit like the data
            for key, expected in commit.files.items():
                if key not in present:
                    problems.append(f"{key}: missing (partition {commit.partition})")
                    damaged = True
                    continue
                data = self.location.read_bytes(key)
                if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                    problems.append(f"{key}: content differs from its commit checksum (partition {commit.partition})")
                    damaged = True
                if key.endswith("/zarr.json"):
                    metadata[key] = data
            if not damaged:
                problems += self._layout_problems(commit, metadata)
            problems += self._stamp_problems(commit)
        return problems

    def _stamp_problems(self, commit: CommitRecord) -> list[str]:
        """A commit stamped by another encoder, or computed with other settings, does not belong here."""
        where = f"{COMMITS}/{commit.partition}.json"
        problems = []
        if commit.encoder is not None:
            try:
                encoder = EncoderIdentity.from_dict(commit.encoder)
            except (KeyError, TypeError):
                return [f"{where}: unreadable encoder identity"]
            if not encoder.same_encoder(self.encoder):
                problems.append(f"{where}: written by encoder {encoder.name} (weights {encoder.weights_hash[:12]}), "
                                f"not the store's {self.encoder.name} (weights {self.encoder.weights_hash[:12]})")
        if commit.settings is not None:
            conflicts = self.effective_settings().conflicts(StoreSettings.from_dict(commit.settings))
            if conflicts:
                problems.append(f"{where}: written with other settings ({'; '.join(conflicts)})")
        return problems

    def _layout_problems(self, commit: CommitRecord, metadata: dict[str, bytes]) -> list[str]:
        """Arrays must have the rows the commit announces, and their data chunks must be among its files
        (zarr reads a chunk that is absent as zeros, so a commit that missed one would pass checksums). Shapes
        come from the arrays' committed zarr.json (`metadata`, key -> bytes): opening each array through zarr
        cost three quarters of verify's time (benchmarks/scale.py)."""
        if commit.rows == 0:
            return []
        expected = {"clip_stacks": (commit.rows, *self.stack_shape),
                    "window_stacks": (commit.window_rows, *self.stack_shape),
                    "window_offsets": (commit.rows + 1,)}
        if not self.settings.windowed:
            del expected["window_stacks"]
        problems = []
        for name, shape in expected.items():
            where = f"{partition_key(commit.partition)}/{name}"
            if not any(key.startswith(f"{where}/c/") for key in commit.files):
                problems.append(f"{where}: its data is not among the partition's committed files")
                continue
            raw = metadata.get(f"{where}/zarr.json")
            if raw is None:
                problems.append(f"{where}: its metadata (zarr.json) is not among the partition's committed files")
                continue
            try:
                actual = tuple(json.loads(raw)["shape"])
            except (ValueError, TypeError, KeyError) as exc:  # unreadable array metadata
                problems.append(f"{where}: cannot be opened ({exc})")
                continue
            if actual != shape:
                problems.append(f"{where}: shape {actual}, its commit record says {shape}")
        return problems

    def info(self) -> dict[str, Any]:
        records = self.records()
        ok = [r for r in records if r.status == STATUS_OK]
        reasons = collections.Counter(r.reason.split(":", 1)[0] for r in records if r.status == STATUS_FAILED)
        return {
            "url": self.location.url,
            "schema_version": self.attributes["schema_version"],
            "encoder": self.encoder.to_dict(),
            "settings": self.settings.__dict__,
            "written_by": self.attributes.get("mullama_version"),
            "created_at": self.attributes.get("created_at"),
            "clips": len(ok),
            "failed_clips": len(records) - len(ok),
            "failure_reasons": dict(sorted(reasons.items())),
            "windows": sum(r.windows for r in ok),
            "audio_hours": round(sum(r.duration for r in ok) / 3600, 4),
            "partitions": len(self._commits),
            "uncommitted_partitions": len(self.uncommitted_partitions()),
            "size_bytes": self.location.size_bytes(),
        }
