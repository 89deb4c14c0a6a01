"""The `mullama train` config: one YAML file per run, every field overridable on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import option


@dataclass
class TrainConfig:
    shards: str = option(help="Folder written by `mullama store export-shards` (with shards.json)")
    llama: str = option(help="Hugging Face LLaMA folder (frozen)")
    out: str = option(help="Run folder: checkpoints, log.jsonl, and the trained adapter in out/adapter")
    stage: int = option(1, help="1: adapter (aggregator, projection, bridge, prefix, gates); "
                                "2: LLaMA norms + new biases + LoRA, adapter frozen")
    init_adapter: str = option("", help="Adapter folder to start from (required for stage 2: the stage-1 result)")
    prompt_format: str = option("clean", help="clean, or mu-llama (the released model's exact prompt)")
    max_length: int = option(96, help="Tokens per example (published: 96 in stage 1, 512 in stage 2)")
    batch_size: int = option(4, help="Examples per micro-batch and rank")
    grad_accum: int = option(1, help="Micro-batches per optimizer step")
    lr: float = option(1e-4, help="Peak learning rate")
    min_lr: float = option(0.0, help="Learning rate at the end of the cosine")
    weight_decay: float = option(0.05, help="AdamW weight decay (never on 1-D parameters or biases)")
    beta1: float = option(0.9, help="AdamW beta1")
    beta2: float = option(0.95, help="AdamW beta2")
    epochs: float = option(3.0, help="Passes over the QA pairs (sets the step count unless --max-steps)")
    max_steps: int = option(0, help="Optimizer steps (0: from --epochs)")
    warmup_epochs: float = option(0.0, help="Linear warm-up length in epochs (or use --warmup-steps)")
    warmup_steps: int = option(0, help="Linear warm-up length in steps")
    clip_grad: float = option(0.0, help="Clip the gradient norm to this value (0: no clipping, as published)")
    adapted_layers: int = option(0, help="Last N LLaMA layers that get the music prompt (0: 20 of 32, same share)")
    query_len: int = option(1, help="Prompt vectors per adapted layer (MU-LLaMA: 1)")
    lora_rank: int = option(16, help="Stage 2: LoRA rank (0: none)")
    stage2_biases: bool = option(True, help="Stage 2: zero-initialised biases on q, o, gate, up, down")
    dtype: str = option("auto", help="Frozen LLaMA dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    device: str = option("auto", help="auto, cpu, cuda")
    bucket: bool = option(True, help="Batch examples of similar length (less padding)")
    workers: int = option(1, help="Data-loading processes per rank (0: load in the training process)")
    seed: int = option(0, help="Seed of the adapter init and the data order")
    save_every: int = option(200, help="Checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = option(2, help="Checkpoints to keep")
    log_every: int = option(10, help="Log every N optimizer steps")
    tensorboard: bool = option(False, help="Also write TensorBoard events (needs the tensorboard package)")
    progress: bool = option(True, help="Show a progress bar")
    resume: bool = option(False, help="Continue from the newest checkpoint in OUT")
    stop_after: int = option(0, help="Stop (with a checkpoint) after N steps in this session, e.g. to fit a "
                                     "scheduler's time slot; --resume continues (0: run to the end)")
    ray: str = option("", help="Run with Ray Train: 'local', 'auto' or a cluster address (empty: this process, "
                               "or torchrun's ranks)")
    ray_workers: int = option(2, help="Ray Train: training processes")
    ray_gpus_per_worker: float = option(0.0, help="Ray Train: GPUs per training process")
