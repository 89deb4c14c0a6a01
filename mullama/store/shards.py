"""The shard format, writer and reader: WebDataset tars of one sample per clip, and `shards.json`.

A sample is `<key>.npy` (the clip stack, float16), optionally `<key>.windows.npy` (its window
stacks), and `<key>.json` (clip id, source metadata and every QA pair of the clip), so a trainer
reads a clip's features once however many questions it has. Text-only items carry the stack of
1 s of silence. `shards.json`, written last and atomically, lists the shards with their counts and
the encoder identity; a folder without it is an unfinished export. Readers decode only the `.json`
and `.npy` members, never pickles.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from mullama.durable import publish, write_atomic
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


class ShardWriter:
    """Rolling tar writer: each shard is written under a temporary name and published once closed."""

    def __init__(self, out: Path, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._handle: Any = None

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
            publish(self.out / f".{name}.tmp", self.out / name)
            self._writer = self._handle = None

    def totals(self) -> dict[str, int]:
        return {key: sum(s[key] for s in self.shards) for key in ("clips", "pairs", "text_items")}

    def write_manifest(self, fields: dict[str, Any]) -> None:
        """Last: the manifest marks the export whole."""
        manifest = {"format": FORMAT, **fields, "shards": self.shards, "totals": self.totals()}
        write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=1).encode())


@dataclass(frozen=True)
class ShardSet:
    """A finished export, checked to be complete: what the trainer reads."""

    folder: Path
    urls: list[str]
    encoder: EncoderIdentity
    clips: int
    pairs: int

    @classmethod
    def open(cls, folder: str | Path) -> "ShardSet":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise MullamaError(f"{folder} has no {MANIFEST}: not a finished `mullama store export-shards` output")
        try:
            manifest = json.loads(path.read_text())
            urls = [str(folder / shard["name"]) for shard in manifest["shards"]]
            totals, encoder = manifest["totals"], EncoderIdentity.from_dict(manifest["encoder"])
            clips, pairs = totals["clips"] + totals["text_items"], totals["pairs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MullamaError(f"{path} is damaged ({type(exc).__name__}: {exc}); export the shards again") from None
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise MullamaError(f"{folder}: shard(s) listed in {MANIFEST} are missing: {', '.join(missing[:3])}")
        if not pairs:
            raise MullamaError(f"{folder} holds no QA pair to train on (see the skipped pairs in {MANIFEST})")
        return cls(folder, urls, encoder, clips, pairs)


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
