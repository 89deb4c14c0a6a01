"""Ray Train launcher: the same training loop in `ray_workers` processes with a torch process group.

Ray Train starts the workers (on any nodes of the cluster), sets up torch.distributed and the device
of each worker; `run_training` then sees a ready process group and behaves as under torchrun.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, get_device

from mullama.config import validate
from mullama.raycluster import connect
from mullama.train.config import TrainConfig
from mullama.train.trainer import check_run, run_training


def _worker(values: dict[str, Any]) -> None:
    """One Ray Train worker: the GPU Ray Train gave it made current, then the loop as under torchrun."""
    config = TrainConfig(**values)
    if torch.cuda.is_available() and config.device != "cpu":
        torch.cuda.set_device(get_device())
    run_training(config)


def train_with_ray(config: TrainConfig) -> Path:
    validate(config)
    check_run(config, config.ray_workers)  # user mistakes as one line here, not as a worker's traceback
    connect(config.ray)
    out = Path(config.out).resolve()
    values = asdict(replace(config, ray="", out=str(out), progress=False,
                            shards=str(Path(config.shards).resolve()), llama=str(Path(config.llama).resolve()),
                            init_adapter=str(Path(config.init_adapter).resolve()) if config.init_adapter else ""))
    use_gpu = config.ray_gpus_per_worker > 0
    resources = {"CPU": 1.0, **({"GPU": config.ray_gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker, train_loop_config=values,
        scaling_config=ScalingConfig(num_workers=config.ray_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="mullama-train", storage_path=str(out / "ray")),
    )
    trainer.fit()
    return out
