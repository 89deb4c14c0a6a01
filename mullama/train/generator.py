"""`mullama generator targets` and `mullama generator train` (docs/generation.md).

Targets: every caption of the pairs files through the MusicGen folder's T5 encoder, once, into a targets folder.
Training: the output tokens and the projector against those stored rows (mean squared error, in target units),
through the frozen LLaMA and adapter; edits read their clip's stacks from the feature store. Neither T5 nor
EnCodec nor MERT runs in the loop. Resumable from the newest checkpoint, like `mullama train`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mullama.config import validate
from mullama.durable import append_lines, owned_folder
from mullama.errors import MullamaError
from mullama.model.identity import check_encoder
from mullama.model.music_llama import MusicLlama
from mullama.music.decoders import decoder_space, load_decoder
from mullama.music.generator import MusicGenerator
from mullama.music.head import heads_for
from mullama.music.pairs import GenerationPair, read_generation_pairs
from mullama.music.space import ConditioningSpace
from mullama.music.targets import ConditioningTargets, TargetsReport, write_targets
from mullama.outputs import refuse_output_over_inputs
from mullama.store import FeatureStore
from mullama.train.config import GeneratorTargetsConfig, GeneratorTrainConfig
from mullama.train.state import Position, latest_checkpoint, load_checkpoint, save_checkpoint, saved_config

LOG = "log.jsonl"
GENERATOR = "generator"
RESUME_KEYS = ("pairs", "targets", "adapter", "llama", "store", "tokens", "layers", "heads", "batch_size", "lr",
               "warmup_steps", "weight_decay", "clip_grad", "seed")  # a resumed run must keep these


def read_pairs(files: list[str]) -> tuple[list[GenerationPair], list[str]]:
    pairs, skipped = [], []
    for path in files:
        found, reasons = read_generation_pairs(path)
        pairs += found
        skipped += [f"{path}: {reason}" for reason in reasons]
    return pairs, skipped


def run_targets(config: GeneratorTargetsConfig) -> TargetsReport:
    validate(config)
    refuse_output_over_inputs(config.out, {"--pairs": config.pairs, "--musicgen": config.musicgen})
    pairs, skipped = read_pairs(config.pairs)
    if not pairs:
        raise MullamaError(f"no usable pair in {', '.join(config.pairs)} ({'; '.join(skipped[:3]) or 'empty'})")
    space = decoder_space(config.musicgen)
    decoder = load_decoder(config.musicgen, device=config.device)
    report = write_targets(config.out, [p.caption for p in pairs], space.to_dict(), decoder.row_count(config.length),
                           space.width, lambda texts: decoder.text_conditioning(texts, config.length)[0],
                           config.progress)
    report.notes += [f"left out {len(skipped)} entries: {'; '.join(skipped[:5])}"] if skipped else []
    return report


@dataclass
class GeneratorTrainReport:
    out: Path
    steps: int
    pairs: int
    edits: int
    skipped: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # mean per logging interval
    seconds: float = 0.0
    exit_code: int = 0

    def lines(self) -> list[str]:
        lines = [f"generator: {self.steps} steps on {self.pairs} pairs ({self.edits} edits) in {self.seconds:.0f} s; "
                 f"{self.out / GENERATOR}"]
        if self.losses:
            lines.append(f"  loss (mean per log interval): {self.losses[0]:.4f} -> {self.losses[-1]:.4f}")
        if self.skipped:
            lines.append(f"  left out {len(self.skipped)} pairs: " + "; ".join(self.skipped[:5])
                         + (" ..." if len(self.skipped) > 5 else ""))
        return lines


def epoch_batches(pairs: list[GenerationPair], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: edits and text requests apart (a batch either has tracks or not), shuffled by seed
    and epoch, so a resumed run sees the batches it would have seen."""
    rng = random.Random(seed * 100_003 + epoch)
    batches = []
    for kind in (False, True):
        members = [i for i, p in enumerate(pairs) if bool(p.clip_id) == kind]
        rng.shuffle(members)
        batches += [members[s:s + batch_size] for s in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def usable_pairs(config: GeneratorTrainConfig, targets: ConditioningTargets, store: FeatureStore | None
                 ) -> tuple[list[GenerationPair], list[str]]:
    pairs, skipped = read_pairs(config.pairs)
    usable = []
    for pair in pairs:
        if pair.caption not in targets.index:
            skipped.append(f"caption {pair.caption[:40]!r} has no target (compute the targets from these pairs)")
        elif pair.clip_id and store is None:
            skipped.append(f"edit of {pair.clip_id!r} needs --store (the feature store holding the clip)")
        elif pair.clip_id and pair.clip_id not in store:
            skipped.append(f"clip {pair.clip_id!r} is not in {config.store}")
        else:
            usable.append(pair)
    if not usable:
        raise MullamaError(f"no usable pair to train on ({'; '.join(skipped[:3]) or 'the pairs files are empty'})")
    return usable, skipped


def run_generator_training(config: GeneratorTrainConfig) -> GeneratorTrainReport:
    validate(config)
    refuse_output_over_inputs(config.out, {"--pairs": config.pairs, "--targets": config.targets,
                                           "--adapter": config.adapter, "--llama": config.llama,
                                           "--musicgen": config.musicgen, "--store": config.store})
    out = Path(config.out)
    targets = ConditioningTargets.open(config.targets)
    space = ConditioningSpace.from_dict(targets.space)
    if config.musicgen:
        space.check(decoder_space(config.musicgen), f"music decoder folder {config.musicgen}")
    store = FeatureStore.open(config.store) if config.store else None
    pairs, skipped = usable_pairs(config, targets, store)
    with owned_folder(out, ".lock", "run folder", f"another process is training in {out}; wait for it or use "
                                                  "another --out"):
        checkpoint = latest_checkpoint(out) if config.resume else None
        if checkpoint is None and (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*")):
            raise MullamaError(f"{out} holds checkpoints of an earlier run: add --resume to continue it, or choose "
                               "another --out")
        if checkpoint is not None:
            saved = saved_config(checkpoint)
            changed = [k for k in RESUME_KEYS if saved.get(k) != asdict(config)[k]]
            if changed:
                raise MullamaError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from "
                                   f"the run in {out}; resume with its settings or use another --out")
        llama = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device)
        if store is not None:
            check_encoder(llama.manifest.encoder_for("audio"), store.encoder, strict=True)
        trained_with = {"adapter": str(Path(config.adapter).resolve()), "llama": str(Path(config.llama).resolve()),
                        **({"musicgen": str(Path(config.musicgen).resolve())} if config.musicgen else {})}
        generator = MusicGenerator.create(llama, config.adapter, config.llama, space, trained_with=trained_with,
                                          seed=config.seed, tokens=config.tokens, length=targets.length,
                                          layers=config.layers, heads=heads_for(space.width, config.heads))
        head = generator.head.train().requires_grad_(True)
        parameters = dict(head.named_parameters())
        optimizer = torch.optim.AdamW(parameters.values(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(1, config.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        scaler = torch.amp.GradScaler(enabled=False)
        position = Position()
        if checkpoint is not None:
            position = load_checkpoint(checkpoint, parameters, optimizer, scheduler, scaler)
        return _train(config, generator, pairs, skipped, targets, store, optimizer, scheduler, scaler, position)


def _train(config: GeneratorTrainConfig, generator: MusicGenerator, pairs: list[GenerationPair], skipped: list[str],
           targets: ConditioningTargets, store: FeatureStore | None, optimizer: torch.optim.Optimizer, scheduler: Any,
           scaler: Any, position: Position) -> GeneratorTrainReport:
    out = Path(config.out)
    scale = generator.config.scale
    device = generator.llama.device
    torch.manual_seed(config.seed + position.step)
    started = time.perf_counter()
    report = GeneratorTrainReport(out, config.steps, len(pairs), sum(bool(p.clip_id) for p in pairs), skipped)
    window: list[float] = []
    bar = tqdm(total=config.steps, initial=position.step, unit="step", desc="train generator",
               disable=not config.progress, dynamic_ncols=True)
    batches = epoch_batches(pairs, config.batch_size, config.seed, position.epoch)
    while position.step < config.steps:
        if position.batches_in_epoch >= len(batches):
            position.epoch += 1
            position.batches_in_epoch = 0
            batches = epoch_batches(pairs, config.batch_size, config.seed, position.epoch)
        chosen = [pairs[i] for i in batches[position.batches_in_epoch]]
        position.batches_in_epoch += 1
        stacks = None
        if chosen[0].clip_id:
            stacks = store.get([p.clip_id for p in chosen]).astype(np.float32)
        target = torch.from_numpy(targets.rows([targets.index[p.caption] for p in chosen])).to(device) * scale
        predicted = generator.conditioning([p.request for p in chosen], stacks)
        loss = torch.nn.functional.mse_loss(predicted.float(), target)
        if not torch.isfinite(loss):
            raise MullamaError(f"the loss became {loss.item()} at step {position.step + 1}; lower --lr and train "
                               "again (--resume would continue from the last checkpoint)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(generator.head.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        position.step += 1
        window.append(loss.item())
        bar.update(1)
        if position.step % config.log_every == 0 or position.step == config.steps:
            mean = float(np.mean(window))
            report.losses.append(mean)
            bar.set_postfix(loss=f"{mean:.4f}")
            append_lines(out / LOG, (json.dumps({"step": position.step, "loss": mean,
                                                 "lr": scheduler.get_last_lr()[0]}) + "\n").encode(), "training log")
            window = []
        if position.step % config.save_every == 0 or position.step == config.steps:
            save_checkpoint(out, position, dict(generator.head.named_parameters()), optimizer, scheduler, scaler,
                            asdict(config), keep=2)
    bar.close()
    generator.save(out / GENERATOR, source={"steps": config.steps, "pairs": len(pairs), "targets": config.targets,
                                            "final_loss": report.losses[-1] if report.losses else None})
    report.seconds = time.perf_counter() - started
    return report
