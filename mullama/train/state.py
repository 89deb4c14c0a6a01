"""Training checkpoints that load without unpickling anything: safetensors for tensors, JSON for the rest.

A checkpoint is written to a temporary folder and renamed, so a crash mid-save never leaves a
half checkpoint that `--resume` would take for whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mullama.durable import publish
from mullama.errors import MullamaError

CHECKPOINTS = "checkpoints"


@dataclass
class Position:
    """Where training stands: optimizer steps done, and micro-batches consumed in the current epoch."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def optimizer_names(optimizer: torch.optim.Optimizer, parameters: dict[str, torch.nn.Parameter]) -> list[str]:
    """Parameter names in the optimizer's own numbering: its groups' order (decayed first), not the dict's."""
    by_id = {id(parameter): name for name, parameter in parameters.items()}
    return [by_id[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, torch.Tensor],
                                                                                  list[dict[str, Any]]]:
    """AdamW state as flat named tensors plus JSON-able param groups (names instead of numbers)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{names[index]}::{key}"] = tensor.detach().cpu().contiguous()
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[i] for i in g["params"]]}
              for g in state["param_groups"]]
    return tensors, groups


def save_checkpoint(out: Path, position: Position, parameters: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, config: dict[str, Any], keep: int) -> Path:
    root = out / CHECKPOINTS
    final = root / f"step-{position.step:08d}"
    temp = root / f".step-{position.step:08d}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in parameters.items()}, str(temp / "trainable.safetensors"))
    tensors, groups = optimizer_tensors(optimizer, optimizer_names(optimizer, parameters))
    tensors["rng::cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng::cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(temp / "optimizer.safetensors"))
    (temp / "state.json").write_text(json.dumps({
        "position": asdict(position), "param_groups": groups, "scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict(), "config": config}, indent=1, default=str))
    shutil.rmtree(final, ignore_errors=True)
    publish(temp, final)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def saved_config(folder: Path) -> dict[str, Any]:
    """The run config a checkpoint was written under (with the world size it trained on)."""
    try:
        return json.loads((folder / "state.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise MullamaError(f"checkpoint {folder} is unreadable ({exc}); "
                           "delete it to resume from an older one") from None


def load_checkpoint(folder: Path, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> Position:
    """Restore parameters, AdamW moments, the schedule, the loss scale, RNG and the data position in place."""
    try:
        trained = load_file(str(folder / "trainable.safetensors"))
        tensors = load_file(str(folder / "optimizer.safetensors"))
        meta = json.loads((folder / "state.json").read_text())
        position = Position(**meta["position"])
    except Exception as exc:  # OSError, JSON errors, SafetensorError, missing keys: all mean a damaged checkpoint
        raise MullamaError(f"checkpoint {folder} is unreadable ({type(exc).__name__}: {exc}); "
                           "delete it to resume from an older one") from None
    if set(trained) != set(parameters):
        raise MullamaError(f"checkpoint {folder} holds other trainable tensors than this run's config trains "
                           "(different stage or adapter settings?)")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(trained[name])
    names = [name for group in meta["param_groups"] for name in group["params"]]
    index = {name: number for number, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name, field = key.split("::")
        if name == "rng":
            continue
        if field != "step" and tensor.shape != parameters[name].shape:
            raise MullamaError(f"checkpoint {folder}: optimizer state {key} has shape {tuple(tensor.shape)}, "
                               f"the parameter has {tuple(parameters[name].shape)}")
        # AdamW keeps its step counter on the CPU; the moments live with their parameter.
        state.setdefault(index[name], {})[field] = tensor if field == "step" else tensor.to(parameters[name].device)
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in meta["param_groups"]]
    if names != optimizer_names(optimizer, parameters):
        raise MullamaError(f"checkpoint {folder} groups the trainable parameters differently from this run "
                           "(different weight-decay split?); resume with the settings it was trained with")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    if meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    torch.set_rng_state(tensors["rng::cpu"])
    if "rng::cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng::cuda"])
    return position
