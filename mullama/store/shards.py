"""The shard format, writer and reader: WebDataset tars of one sample per clip, and `shards.json`.

A sample is `<key>.npy` (the clip stack, float16), optionally `<key>.windows.npy` (its window
stacks), and `<key>.json` (clip id, source metadata and every QA pair of the clip), so a trainer
reads a clip's features once however many questions it has. Text-only items carry the stack of
1 s of silence. `shards.json`, written last and atomically, lists the shards with their counts and
sha256 and the encoder identity; a folder without it is an unfinished export. Readers decode only
the `.json` and `.npy` members, never pickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from mullama.durable import flush, publish, write_atomic
from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError

MANIFEST = "shards.json"
FORMAT = "mullama-shards/1"


def clip_sample(number: int, stack: np.ndarray, meta: dict[str, Any], windows: np.ndarray | None = None
                ) -> dict[str, Any]:
    """The sample of one clip (or text-only item) as the writer stores it."""
    sample = {"__key__": f"{number:09d}", "npy": np.asarray(stack, dtype=np.float16), "json": meta}
    if windows is not None:
        sample["windows.npy"] = windows
    return sample


class _HashingFile:
    """The file TarWriter writes into, hashing the bytes on their way: a shard's sha256 without reading it back."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ShardWriter:
    """Rolling tar writer into a hidden staging folder inside OUT; `commit` swaps the finished shards in.

    An export in OUT stays whole until the new one is written in full: a failure while writing leaves it
    untouched (`discard` drops the staging folder), and the swap removes the old `shards.json` first, so a
    crash in the middle of it leaves a folder without manifest, which readers take for unfinished.
    """

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.staging = out / f".staging-{uuid.uuid4().hex}"
        self.staging.mkdir(parents=True)
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._handle: _HashingFile | None = None

    def _open(self) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        self._handle = _HashingFile(self.staging / f".{name}.tmp")
        self._writer = wds.TarWriter(self._handle, mtime=0)  # fixed mtime: identical reruns, identical bytes
        # Plain ustar headers. TarWriter leaves tarfile's pax default, whose extended header for a float mtime
        # cost 2 KB a clip (5.1 against 3.1 KB a sample of 4 x 64 float16) and 40 % more CPU a clip (measured
        # on 10,000 samples); the keys (9 digits and a short extension) are far inside ustar's 100 characters.
        self._writer.tarstream.format = tarfile.USTAR_FORMAT
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
        """Finish the open shard: closed (so flushed) before `publish` syncs it to the device."""
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            name = self.shards[-1]["name"]
            self.shards[-1]["sha256"] = self._handle.sha256.hexdigest()
            publish(self.staging / f".{name}.tmp", self.staging / name)
            self._writer = self._handle = None

    def totals(self) -> dict[str, int]:
        return {key: sum(s[key] for s in self.shards) for key in ("clips", "pairs", "text_items")}

    def commit(self, fields: dict[str, Any]) -> None:
        """Swap the staged shards in for OUT's old export; the manifest, written last, marks the export whole."""
        self.close()
        (self.out / MANIFEST).unlink(missing_ok=True)
        flush(self.out)  # the old export is "unfinished" on disk before any of its shards goes
        for stale in [*self.out.glob("shard-*.tar"), *self.out.glob(".shard-*.tmp")]:
            stale.unlink(missing_ok=True)
        for shard in self.shards:
            publish(self.staging / shard["name"], self.out / shard["name"])
        manifest = {"format": FORMAT, **fields, "shards": self.shards, "totals": self.totals()}
        write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1).encode())
        for leftover in self.out.glob(".staging-*"):  # this one, now empty, and those of killed exports (the
            shutil.rmtree(leftover, ignore_errors=True)  # caller holds OUT's lock: no other export is running)

    def discard(self) -> None:
        """After a failure: drop what was staged. OUT's old export is untouched, unless the swap had begun:
        then OUT has no manifest and reads as unfinished."""
        if self._handle is not None:
            self._handle.close()
        shutil.rmtree(self.staging, ignore_errors=True)


@dataclass(frozen=True)
class ShardSet:
    """A finished export, checked to be complete: what the trainer reads."""

    folder: Path
    urls: list[str]
    encoder: EncoderIdentity
    clips: int
    pairs: int
    fingerprint: str  # changes whenever the exported data changes: a resumed run checks it is the same

    @classmethod
    def open(cls, folder: str | Path) -> "ShardSet":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise MullamaError(f"{folder} has no {MANIFEST}: not a finished `mullama store export-shards` output")
        try:
            manifest = json.loads(path.read_text())
            names = [str(shard["name"]) for shard in manifest["shards"]]
            hashes = [shard.get("sha256") for shard in manifest["shards"]]
            totals, encoder = manifest["totals"], EncoderIdentity.from_dict(manifest["encoder"])
            clips, pairs = totals["clips"] + totals["text_items"], totals["pairs"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MullamaError(f"{path} is damaged ({type(exc).__name__}: {exc}); export the shards again") from None
        urls = [str(folder / name) for name in names]
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise MullamaError(f"{folder}: shard(s) listed in {MANIFEST} are missing: {', '.join(missing[:3])}")
        if not pairs:
            raise MullamaError(f"{folder} holds no QA pair to train on (see the skipped pairs in {MANIFEST})")
        # Exports from before per-shard hashes: the sizes stand in (a re-export of other data changes them too).
        contents = [digest or f"bytes:{Path(url).stat().st_size}" for digest, url in zip(hashes, urls)]
        identity = {"shards": list(zip(names, contents)), "totals": totals, "encoder": manifest["encoder"]}
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return cls(folder, urls, encoder, clips, pairs, fingerprint)


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Only the members training reads, decoded without pickle: webdataset's default decoders would
    unpickle `.pyd`/`.pickle` members and `torch.load` `.pth` ones from a shard someone handed over."""
    where = f"sample {sample.get('__key__')} of {sample.get('__url__')}"
    if "json" not in sample or "npy" not in sample:
        raise MullamaError(f"{where} lacks its .json or .npy member: not a `mullama store export-shards` shard")
    try:
        return {"json": json.loads(sample["json"]), "npy": np.load(io.BytesIO(sample["npy"]), allow_pickle=False)}
    except ValueError as exc:
        raise MullamaError(f"{where} is damaged ({exc}); export the shards again") from None
