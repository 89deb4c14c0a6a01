"""The training loop: frozen LLaMA + music adapter, batches of cached stacks, exact resume.

One process, torchrun's ranks (DDP) or Ray Train workers run the same loop; rank 0 logs and saves.
Stage 1 trains the adapter only, so the layers before the first adapted layer, whose inputs need no
gradient, build no autograd graph at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from mullama.config import validate
from mullama.durable import owned_folder, write_atomic
from mullama.errors import MullamaError
from mullama.model.music_llama import MusicLlama
from mullama.model.stage2 import set_trainable
from mullama.outputs import refuse_output_over_inputs
from mullama.runtime import resolve_device
from mullama.store.shards import ShardSet
from mullama.train.config import TrainConfig
from mullama.train.data import BatchSpec, EpochStream, ModalityStream, TrainingData
from mullama.train.state import Position, latest_checkpoint, load_checkpoint, save_checkpoint, saved_config

ADAPTER = "adapter"
LOG = "log.jsonl"
LOCK = ".lock"  # flock-ed by the process training in OUT
SHARDS_FINGERPRINT = "shards_fingerprint"  # saved with each checkpoint's config: what data the run trained on


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # True when this process started the process group (torchrun), so it must end it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_ranks(device: str) -> Ranks:
    """torchrun (env:// rendezvous) or Ray Train (process group already up), else a single process."""
    owns_group = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        owns_group = True
    if not dist.is_initialized():
        return Ranks(device=resolve_device(device))
    if torch.cuda.is_available() and device != "cpu" and not owns_group:
        chosen = torch.device("cuda", torch.cuda.current_device())  # set by the Ray Train worker (ray_launcher)
    elif torch.cuda.is_available() and device != "cpu":
        local = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        torch.cuda.set_device(local)
        chosen = torch.device("cuda", local)
    else:
        chosen = torch.device("cpu")
    return Ranks(dist.get_rank(), dist.get_world_size(), chosen, owns_group)


def end_ranks(ranks: Ranks, finished: bool) -> None:
    """After a finished run wait for every rank; then end a group this process started. A process that exits
    with a live gloo group can abort ("terminate called without an active exception") and fail the torchrun job."""
    if not dist.is_initialized():
        return
    if finished and ranks.world > 1:
        dist.barrier()
    if ranks.owns_group:
        dist.destroy_process_group()


# Settings a resumed run may change; every other field decides the data order, the schedule or the numerics,
# so resuming with another value would not continue the same run.
CHANGEABLE_ON_RESUME = {"llama", "out", "resume", "stop_after", "save_every", "keep_checkpoints", "log_every",
                        "tensorboard", "progress", "device", "ray", "ray_gpus_per_worker"}


def comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Config values with input folders made absolute: a run resumed from another directory is the same run."""
    return {key: str(Path(value).resolve()) if key in ("shards", "init_adapter") and value else value
            for key, value in values.items()}


def stale_log(out: Path) -> bool:
    """The log of a run killed before its first checkpoint: nothing to resume and no adapter, so starting
    again loses nothing."""
    return (out / LOG).exists() and latest_checkpoint(out) is None and not (out / ADAPTER).exists()


def check_run(config: TrainConfig, world: int) -> TrainingData:
    """Every user mistake found before any model loads, on the driver as well as on each rank."""
    refuse_output_over_inputs(config.out, {"--shards": config.shards, "--extra-shards": config.extra_shards,
                                           "--llama": config.llama, "--init-adapter": config.init_adapter})
    if config.stage == 2 and not config.init_adapter:
        raise MullamaError("stage 2 starts from a trained stage-1 adapter: give --init-adapter")
    if config.min_lr > config.lr:
        raise MullamaError(f"--min-lr {config.min_lr} is above --lr {config.lr}: the schedule decays from --lr "
                           "down to --min-lr; give a smaller --min-lr")
    shards = TrainingData.open(config.shards, config.extra_shards)
    out = Path(config.out)
    if not config.resume:
        if latest_checkpoint(out) is not None or (out / ADAPTER).exists():
            raise MullamaError(f"{out} already holds a run; use --resume to continue it or choose another --out")
        return shards
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise MullamaError(f"--resume: no checkpoint in {out / 'checkpoints'}, so nothing to continue; "
                           "start without --resume")
    saved = comparable(saved_config(checkpoint))
    if saved.get(SHARDS_FINGERPRINT, shards.fingerprint) != shards.fingerprint:  # older checkpoints have none
        given = ", ".join([config.shards, *config.extra_shards])
        raise MullamaError(f"the shards in {given} changed since checkpoint {checkpoint.name} (exported "
                           "again with other data); resume only on the shards it was trained on, or start a new run "
                           "in another --out")
    current = comparable({**asdict(config), "world": world})
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
               if key not in CHANGEABLE_ON_RESUME and key in saved and saved[key] != value]
    if changed:
        raise MullamaError(f"--resume: {checkpoint.name} was trained with other settings ({'; '.join(changed)}); "
                           "resume with the settings it was trained with")
    return shards


def build_model(config: TrainConfig, shards: TrainingData, device: torch.device) -> MusicLlama:
    if config.init_adapter:
        model = MusicLlama.load(config.init_adapter, config.llama, dtype=config.dtype, adapter_dtype="fp32",
                                device=str(device), encoder=shards.encoders)
        missing = sorted(set(s.encoder.modality for s in shards.sets) - set(model.modalities))
        if missing:
            raise MullamaError(f"--init-adapter {config.init_adapter} has no {', '.join(missing)} branch; train "
                               "those modalities from the start, together with the others")
    else:
        model = MusicLlama.create(config.llama, shards.encoders, adapted_layers=config.adapted_layers or None,
                                  query_len=config.query_len, prompt_format=config.prompt_format, dtype=config.dtype,
                                  adapter_dtype="fp32", device=str(device), seed=config.seed)
    if config.stage == 2 and not model.config.stage2:
        model.enable_stage2(biases=config.stage2_biases, lora_rank=config.lora_rank, seed=config.seed)
    return model


def trainable_fp32(model: MusicLlama, stage: int) -> dict[str, torch.nn.Parameter]:
    """The stage's parameters, kept in fp32 (master weights) whatever the frozen LLaMA's dtype."""
    parameters = set_trainable(model.model, stage)
    for parameter in parameters.values():
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return parameters


def param_groups(parameters: dict[str, torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Decay parameters of two or more dimensions (matrices, and the gate and prefix tables, as the published
    code did); never 1-D parameters (norms, the aggregator bias) or biases."""
    decay = [p for n, p in parameters.items() if p.ndim >= 2 and not n.endswith(".bias")]
    rest = [p for n, p in parameters.items() if not (p.ndim >= 2 and not n.endswith(".bias"))]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """Linear warm-up, then half a cosine down to `floor` (a fraction of the peak), per optimizer step."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def plan_steps(config: TrainConfig, shards: TrainingData, world: int) -> tuple[int, int, int]:
    """(total optimizer steps, warm-up steps, micro-batches per epoch and rank)."""
    per_epoch = max(1, math.ceil(shards.pairs / (config.batch_size * world)))
    steps_per_epoch = per_epoch / config.grad_accum  # fractional: accumulation may span an epoch's end
    total = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
    return total, min(warmup, total), per_epoch


@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float]
    adapter: Path | None
    tokens: int
    seconds: float
    stopped: bool = False  # --stop-after ended this session before the last step
    exit_code: int = 0

    def lines(self) -> list[str]:
        if self.stopped:
            return [f"stopped after step {self.steps} with a checkpoint in {self.out / 'checkpoints'}; "
                    "continue with --resume"]
        if self.adapter is None:  # a rank other than the first: rank 0 reports
            return []
        first, last = (self.losses[0], self.losses[-1]) if self.losses else (float("nan"),) * 2
        return [f"trained {self.steps} steps ({self.tokens} tokens this session, {self.seconds:.0f} s); "
                f"loss {first:.3f} -> {last:.3f}",
                f"adapter: {self.adapter}   log: {self.out / LOG}"]


def _logged_step(line: str) -> float:
    """The step of a log line; a line torn by a kill in mid-write counts as never written."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class JsonlLog:
    def __init__(self, path: Path, enabled: bool, tensorboard: bool):
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard:
            try:  # here, not at the top: tensorboard is an optional package, not a dependency of mullama
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MullamaError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def forget_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run trains those steps again), so each step is logged once."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= step]
        write_atomic(self.path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "tokens_per_s"):
                self.writer.add_scalar(key, record[key], record["step"])


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast around a half-precision LLaMA (fp32 master weights); nothing for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_training(config: TrainConfig) -> TrainResult:
    """Train, checkpoint and save the adapter; with `config.resume`, continue the newest checkpoint exactly."""
    validate(config)  # Python callers get the command line's checks
    ranks = setup_ranks(config.device)
    finished = False
    try:
        result = train_on_ranks(config, ranks)
        finished = True
    finally:
        end_ranks(ranks, finished)
    return result


def train_on_ranks(config: TrainConfig, ranks: Ranks) -> TrainResult:
    """Rank 0 holds OUT's lock for the whole run: the kernel drops it when the process dies, so a folder whose
    lock is free and that has no checkpoint was left by a killed run and can be started again."""
    shards = check_run(config, ranks.world)
    if not ranks.main:
        return train_steps(config, ranks, shards)
    out = Path(config.out)
    busy = f"{out} is in use by another training process; wait for it to end or choose another --out"
    with owned_folder(out, LOCK, "the run folder --out", busy):
        if not config.resume and stale_log(out):
            print(f"note: {out} holds the log of a run that ended before its first checkpoint, so there is "
                  "nothing to resume; starting afresh (the old log is cleared)", file=sys.stderr)
        return train_steps(config, ranks, shards)


def epoch_batches(config: TrainConfig, ranks: Ranks, shards: TrainingData, spec: BatchSpec, tokenizer: Any,
                  epoch: int) -> torch.utils.data.IterableDataset:
    """One epoch's batches for this rank: of the one shard set, or of every modality's, interleaved."""
    def stream(shard_set: ShardSet) -> EpochStream:
        quota = None if ranks.world == 1 else max(1, math.ceil(shard_set.pairs / (config.batch_size * ranks.world)))
        return EpochStream(shard_set, tokenizer, spec, config.seed, epoch, ranks.rank, ranks.world,
                           batches_per_rank=quota)

    if not shards.multimodal:
        return stream(shards.sets[0])
    return ModalityStream([(s.encoder.modality, stream(s), s.pairs) for s in shards.sets], config.seed, epoch,
                          ranks.rank)


@dataclass
class StepMeter:
    """Loss, tokens and time of a run: the progress bar after every step, the log every `log_every` steps."""

    bar: tqdm
    log: JsonlLog
    total: int
    start_step: int
    log_every: int
    losses: list[float] = field(default_factory=list)  # one mean loss per optimiser step
    window: list[float] = field(default_factory=list)  # micro-batch losses since the last log record
    tokens: int = 0
    window_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    window_started: float = field(default_factory=time.perf_counter)

    def micro_batch(self, loss: float, tokens: int) -> None:
        self.window.append(loss)
        self.tokens += tokens
        self.window_tokens += tokens

    def step(self, position: Position, lr: float, grad_accum: int) -> None:
        step_loss = sum(self.window[-grad_accum:]) / grad_accum
        self.losses.append(step_loss)
        self.bar.update(1)
        now = time.perf_counter()
        self.bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{self.tokens / (now - self.started):.0f}",
                             refresh=False)
        if position.step % self.log_every == 0 or position.step == self.total:
            self.log.write({"step": position.step, "epoch": position.epoch, "loss": sum(self.window) / len(self.window),
                            "lr": lr, "tokens": self.tokens,
                            "tokens_per_s": self.window_tokens / max(now - self.window_started, 1e-9),
                            "elapsed_s": now - self.started,
                            "eta_s": (now - self.started) / (position.step - self.start_step)
                            * (self.total - position.step)})
            self.window, self.window_tokens, self.window_started = [], 0, now


@dataclass
class Optimisation:
    """The trainable tensors and what updates them: AdamW, the schedule and the fp16 loss scaler."""

    parameters: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    def step(self, clip_grad: float) -> None:
        if clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(list(self.parameters.values()), clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def optimisation(config: TrainConfig, model: MusicLlama, device: torch.device, total: int, warmup: int) -> Optimisation:
    parameters = trainable_fp32(model, config.stage)
    optimizer = torch.optim.AdamW(param_groups(parameters, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, config.min_lr / config.lr))
    # fp16 gradients through a frozen fp16 LLaMA underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=model.dtype == torch.float16)
    return Optimisation(parameters, optimizer, scheduler, scaler)


def train_steps(config: TrainConfig, ranks: Ranks, shards: TrainingData) -> TrainResult:
    out = Path(config.out)
    torch.manual_seed(config.seed)
    model = build_model(config, shards, ranks.device)
    total, warmup, _ = plan_steps(config, shards, ranks.world)
    opt = optimisation(config, model, ranks.device, total, warmup)
    position = Position()
    if config.resume:
        position = load_checkpoint(latest_checkpoint(out), opt.parameters, opt.optimizer, opt.scheduler, opt.scaler)
    network = model.model
    if ranks.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(model.model, device_ids=None if ranks.device.type == "cpu"
                                                            else [ranks.device.index])
    log = JsonlLog(out / LOG, ranks.main, config.tensorboard)
    log.forget_after(position.step)  # steps trained after the checkpoint are trained (and logged) again
    spec = BatchSpec(config.batch_size, config.max_length, model.prompt_format, config.bucket)
    bar = tqdm(total=total, initial=position.step, unit="step", desc=f"train stage {config.stage}",
               disable=not (config.progress and ranks.main), dynamic_ncols=True)
    meter = StepMeter(bar, log, total, position.step, config.log_every)
    end = min(total, position.step + config.stop_after) if config.stop_after else total
    micro = 0
    network.train()
    while position.step < end:
        stream = epoch_batches(config, ranks, shards, spec, model.tokenizer, position.epoch)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                             persistent_workers=False)
        produced = 0
        for index, batch in enumerate(loader):
            produced += 1
            if index < position.batches_in_epoch:
                continue  # resuming: these batches were trained on before the checkpoint
            modality = batch.pop("modality", None)
            batch = {k: v.to(ranks.device) for k, v in batch.items()}
            with autocast(ranks.device, model.dtype):
                prompt = model.model.music_prompt({modality: batch["stacks"]} if modality else batch["stacks"])
                output = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], music_prompt=prompt, use_cache=False)
            opt.scaler.scale(output.loss / config.grad_accum).backward()
            meter.micro_batch(float(output.loss.detach()), int(batch["attention_mask"].sum()))
            position.batches_in_epoch = index + 1
            micro += 1
            if micro % config.grad_accum:
                continue
            opt.step(config.clip_grad)
            position.step += 1
            meter.step(position, opt.scheduler.get_last_lr()[0], config.grad_accum)
            if ranks.main and (position.step % config.save_every == 0 or position.step == end):
                save_checkpoint(out, position, opt.parameters, opt.optimizer, opt.scheduler, opt.scaler,
                                {**asdict(config), "world": ranks.world, SHARDS_FINGERPRINT: shards.fingerprint},
                                config.keep_checkpoints)
            if position.step >= end:
                break
        else:
            if not produced:
                raise MullamaError(f"{shards.folder}: an epoch gave no training batch (every answer truncated away "
                                   f"by --max-length {config.max_length}?)")
            position.epoch += 1
            position.batches_in_epoch = 0
    bar.close()
    adapter = None
    if ranks.main and position.step == total:
        adapter = model.save(out / ADAPTER, source={"trained_by": "mullama train", "stage": config.stage,
                                                    "steps": position.step,
                                                    "shards": ", ".join(str(s.folder) for s in shards.sets)})
    return TrainResult(out, position.step, meter.losses, adapter, meter.tokens, time.perf_counter() - meter.started,
                       stopped=position.step < total)
