"""Streaming training batches from WebDataset shards: clips -> QA pairs -> tokens -> length buckets.

The order is a pure function of (seed, epoch, rank), so a resumed run can skip the batches it has
already trained on and see exactly the batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds

from mullama.encoder_identity import AUDIO, EncoderIdentity
from mullama.errors import MullamaError
from mullama.model.prompts import IGNORE_INDEX, pad_right, tokenize_example
from mullama.store.shards import ShardSet, decode_sample


@dataclass
class TrainingExample:
    """A tokenised QA pair with the stack of its clip (shared by the clip's other pairs)."""

    input_ids: list[int]
    labels: list[int]
    stack: np.ndarray
    clip_id: str

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class BatchSpec:
    """How examples are made and grouped."""

    batch_size: int
    max_length: int
    prompt_format: str
    bucket: bool = True
    pool_batches: int = 32  # length buckets are cut from pools of this many batches
    shuffle_buffer: int = 256  # clips


def expand_clip(sample: dict[str, Any], tokenizer: Any, spec: BatchSpec) -> list[TrainingExample]:
    """One shard sample (a clip and its QA pairs) -> one example per pair; the stack is shared."""
    meta, stack = sample["json"], sample["npy"]
    name = meta.get("clip_id") or "(text-only)"
    examples = []
    for pair in meta["qa"]:
        tokens = tokenize_example(tokenizer, pair["question"], pair["answer"], spec.prompt_format, spec.max_length)
        if any(label != IGNORE_INDEX for label in tokens.labels):  # an answer truncated away teaches nothing
            examples.append(TrainingExample(tokens.input_ids, tokens.labels, stack, name))
    return examples


def bucketed(examples: Iterable[TrainingExample], spec: BatchSpec, rng: random.Random
             ) -> Iterator[list[TrainingExample]]:
    """Batches of similar length: a pool is sorted by length, cut into batches, and those shuffled."""
    pool_size = spec.batch_size * (spec.pool_batches if spec.bucket else 1)
    pool: list[TrainingExample] = []

    def drain() -> Iterator[list[TrainingExample]]:
        ordered = sorted(pool, key=len) if spec.bucket else pool
        batches = [ordered[i:i + spec.batch_size] for i in range(0, len(ordered), spec.batch_size)]
        rng.shuffle(batches)
        yield from batches

    for example in examples:
        pool.append(example)
        if len(pool) >= pool_size:
            yield from drain()
            pool = []
    if pool:
        yield from drain()


def collate(batch: list[TrainingExample], pad_id: int) -> dict[str, torch.Tensor]:
    tensors = {name: torch.tensor(rows, dtype=torch.long) for name, rows in pad_right(batch, pad_id).items()}
    tensors["stacks"] = torch.from_numpy(np.stack([e.stack for e in batch]).astype(np.float32))
    return tensors


class EpochStream(torch.utils.data.IterableDataset):
    """The batches of one epoch for one rank; DataLoader workers split its shards between them."""

    def __init__(self, shards: ShardSet, tokenizer: Any, spec: BatchSpec, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, batches_per_rank: int | None = None):
        super().__init__()
        self.shards, self.tokenizer, self.spec = shards, tokenizer, spec
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.batches_per_rank = batches_per_rank
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def _shards(self) -> Any:
        """The shard source: this epoch's shuffled list, or (several ranks) a seeded endless resampling."""
        urls = list(self.shards.urls)
        if self.world == 1:
            random.Random(f"{self.seed}-{self.epoch}-shards").shuffle(urls)
            return [wds.SimpleShardList(urls), wds.split_by_worker]
        # Several ranks: every rank and worker draws shards with replacement from its own seeded stream for a
        # fixed number of batches, so all ranks take the same number of steps whatever the shard sizes.
        seed = (self.seed * 1_000_003 + self.epoch) * 1009 + self.rank
        return [wds.ResampledShards(urls, seed=seed, deterministic=True)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        salt = f"{self.seed}-{self.epoch}-{self.rank}-{worker}"
        pipeline = wds.DataPipeline(*self._shards(), wds.tarfile_to_samples(),
                                    wds.shuffle(self.spec.shuffle_buffer, rng=random.Random(f"{salt}-clips")),
                                    wds.map(decode_sample))
        examples = (example for sample in pipeline for example in expand_clip(sample, self.tokenizer, self.spec))
        for count, batch in enumerate(bucketed(examples, self.spec, random.Random(f"{salt}-batches"))):
            if self.batches_per_rank is not None and count >= self._worker_quota(info):
                return
            yield collate(batch, self.pad_id)

    def _worker_quota(self, info: Any) -> int:
        workers = info.num_workers if info else 1
        worker = info.id if info else 0
        return self.batches_per_rank // workers + (worker < self.batches_per_rank % workers)


def padding_fraction(batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Share of the computed positions that are padding."""
    real = total = 0
    for batch in batches:
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1.0 - real / total if total else 0.0


@dataclass(frozen=True)
class TrainingData:
    """The shard sets a run trains on: one (MU-LLaMA's audio adapter), or one per input modality, each exported
    from its own store, for MuMu-LLaMA's layout of a branch and a block of adapted layers per modality."""

    sets: tuple[ShardSet, ...]

    @classmethod
    def open(cls, folder: str, extra: list[str] | tuple[str, ...] = ()) -> "TrainingData":
        sets = tuple(ShardSet.open(f) for f in [folder, *extra])
        seen: dict[str, Path] = {}
        for shard_set in sets:
            modality = shard_set.encoder.modality
            if modality in seen:
                raise MullamaError(f"{seen[modality]} and {shard_set.folder} both hold {modality} stacks; give one "
                                   "shard folder per modality (export the stores' QA pairs together instead)")
            seen[modality] = shard_set.folder
        return cls(sets)

    @property
    def multimodal(self) -> bool:
        """MuMu-LLaMA's layout: several modalities, or images or videos alone."""
        return len(self.sets) > 1 or self.sets[0].encoder.modality != AUDIO

    @property
    def folder(self) -> Path:
        return self.sets[0].folder

    @property
    def pairs(self) -> int:
        return sum(s.pairs for s in self.sets)

    @property
    def fingerprint(self) -> str:
        if len(self.sets) == 1:
            return self.sets[0].fingerprint
        return hashlib.sha256("|".join(s.fingerprint for s in self.sets).encode()).hexdigest()

    @property
    def encoders(self) -> EncoderIdentity | dict[str, EncoderIdentity]:
        """What the adapter is built for: the one audio encoder, or {modality: encoder} for the multi-modal layout."""
        if not self.multimodal:
            return self.sets[0].encoder
        return {s.encoder.modality: s.encoder for s in self.sets}


class ModalityStream(torch.utils.data.IterableDataset):
    """The batches of several shard sets in one epoch, each batch of one modality (tagged "modality"), drawn in
    a seeded order weighted by each set's QA pairs: a pure function of (seed, epoch, rank) like EpochStream."""

    def __init__(self, streams: list[tuple[str, EpochStream, int]], seed: int, epoch: int, rank: int = 0):
        super().__init__()
        self.streams, self.seed, self.epoch, self.rank = streams, seed, epoch, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        live = [(modality, iter(stream), weight) for modality, stream, weight in self.streams]
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-modalities")
        while live:
            chosen = rng.choices(range(len(live)), weights=[weight for _, _, weight in live])[0]
            modality, batches, _ = live[chosen]
            try:
                batch = next(batches)
            except StopIteration:
                del live[chosen]
                continue
            yield {**batch, "modality": modality}
