"""The `mullama train` config: one YAML file per run, every field overridable on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import at_least, between, device_name, files_given, greater_than, one_of, option, path_given


@dataclass
class TrainConfig:
    shards: str = option(help="Folder written by `mullama store export-shards` (with shards.json)", check=path_given)
    llama: str = option(help="Hugging Face LLaMA folder (frozen)", check=path_given)
    out: str = option(help="Run folder: checkpoints, log.jsonl, and the trained adapter in out/adapter",
                      check=path_given)
    extra_shards: list[str] = option([], help="More shard folders, each exported from another modality's store "
                                              "(images, videos): trained together in MuMu-LLaMA's layout, a branch "
                                              "and a block of adapted layers per modality (docs/vision.md)")
    stage: int = option(1, help="1: adapter (aggregator, projection, bridge, prefix, gates); "
                                "2: LLaMA norms + new biases + LoRA, adapter frozen", check=one_of(1, 2))
    init_adapter: str = option("", help="Adapter folder to start from (required for stage 2: the stage-1 result)")
    prompt_format: str = option("clean", help="clean, or mu-llama (the released model's exact prompt)",
                                check=one_of("clean", "mu-llama"))
    max_length: int = option(96, help="Tokens per example (published: 96 in stage 1, 512 in stage 2)",
                             check=at_least(2))
    batch_size: int = option(4, help="Examples per micro-batch and rank", check=at_least(1))
    grad_accum: int = option(1, help="Micro-batches per optimizer step", check=at_least(1))
    lr: float = option(1e-4, help="Peak learning rate", check=greater_than(0))
    min_lr: float = option(0.0, help="Learning rate at the end of the cosine", check=at_least(0))
    weight_decay: float = option(0.05, help="AdamW weight decay (never on 1-D parameters or biases)",
                                 check=at_least(0))
    beta1: float = option(0.9, help="AdamW beta1", check=between(0, 1))
    beta2: float = option(0.95, help="AdamW beta2", check=between(0, 1))
    epochs: float = option(3.0, help="Passes over the QA pairs (sets the step count unless --max-steps)",
                           check=greater_than(0))
    max_steps: int = option(0, help="Optimizer steps (0: from --epochs)", check=at_least(0))
    warmup_epochs: float = option(0.0, help="Linear warm-up length in epochs (or use --warmup-steps)",
                                  check=at_least(0))
    warmup_steps: int = option(0, help="Linear warm-up length in steps", check=at_least(0))
    clip_grad: float = option(0.0, help="Clip the gradient norm to this value (0: no clipping, as published)",
                              check=at_least(0))
    adapted_layers: int = option(0, help="Last N LLaMA layers that get the music prompt (0: 20 of 32, same share; "
                                         "per modality in the multi-modal layout: 6 of 32)",
                                 check=at_least(0))
    query_len: int = option(1, help="Prompt vectors per adapted layer (MU-LLaMA: 1)", check=at_least(1))
    lora_rank: int = option(16, help="Stage 2: LoRA rank (0: none)", check=at_least(0))
    stage2_biases: bool = option(True, help="Stage 2: zero-initialised biases on q, o, gate, up, down")
    dtype: str = option("auto", help="Frozen LLaMA dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32",
                        check=one_of("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    bucket: bool = option(True, help="Batch examples of similar length (less padding)")
    workers: int = option(1, help="Data-loading processes per rank (0: load in the training process)",
                          check=at_least(0))
    seed: int = option(0, help="Seed of the adapter init and the data order", check=at_least(0))
    save_every: int = option(200, help="Checkpoint every N optimizer steps (and at the end)", check=at_least(1))
    keep_checkpoints: int = option(2, help="Checkpoints to keep (0: all)", check=at_least(0))
    log_every: int = option(10, help="Log every N optimizer steps", check=at_least(1))
    tensorboard: bool = option(False, help="Also write TensorBoard events (needs the tensorboard package)")
    progress: bool = option(True, help="Show a progress bar")
    resume: bool = option(False, help="Continue from the newest checkpoint in OUT")
    stop_after: int = option(0, help="Stop (with a checkpoint) after N steps in this session, e.g. to fit a "
                                     "scheduler's time slot; --resume continues (0: run to the end)",
                             check=at_least(0))
    ray: str = option("", help="Run with Ray Train: 'local', 'auto' or a cluster address (empty: this process, "
                               "or torchrun's ranks)")
    ray_workers: int = option(2, help="Ray Train: training processes", check=at_least(1))
    ray_gpus_per_worker: float = option(0.0, help="Ray Train: GPUs per training process", check=at_least(0))


@dataclass(kw_only=True)
class GeneratorTargetsConfig:
    pairs: list[str] = option([], help="Generation pairs files (JSON lists of request / caption / clip_id): every "
                                       "caption is encoded once", check=files_given)
    musicgen: str = option(help="Music decoder folder whose text side defines the conditioning space: MusicGen "
                                "(MusicGen-Melody shares T5-base with it) or an AudioLDM2 pipeline",
                           check=path_given)
    out: str = option(help="Targets folder to write (resumable: a killed run continues)", check=path_given)
    length: int = option(128, help="T5 rows per caption (MusicGen pads captions to 128 tokens; AudioLDM2 adds its "
                                    "language model's 8 rows)",
                         check=at_least(1))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    progress: bool = option(True, help="Show a progress bar")


@dataclass(kw_only=True)
class GeneratorTrainConfig:
    pairs: list[str] = option([], help="Generation pairs files (request / caption, and clip_id for an edit)",
                              check=files_given)
    targets: str = option(help="Targets folder from `mullama generator targets` holding every caption",
                          check=path_given)
    adapter: str = option(help="Trained adapter folder the LLaMA reads requests (and edited tracks) through",
                          check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on (frozen)", check=path_given)
    out: str = option(help="Run folder: checkpoints, log.jsonl, and the generator in out/generator",
                      check=path_given)
    musicgen: str = option("", help="The MusicGen or AudioLDM2 folder to generate with (checked against the "
                                    "targets' text encoder and recorded as `mullama generate`'s default)")
    store: str = option("", help="Feature store holding the clips of edit pairs (their stacks, never audio)")
    tokens: int = option(8, help="Output tokens after the request (MuMu-LLaMA: 8)", check=at_least(1))
    layers: int = option(4, help="Encoder and decoder layers of the projector Transformer", check=at_least(1))
    heads: int = option(4, help="Attention heads of the projector (lowered to divide a small width)",
                        check=at_least(1))
    steps: int = option(2000, help="Optimizer steps", check=at_least(1))
    batch_size: int = option(8, help="Pairs per step (edits and text requests in separate batches)",
                             check=at_least(1))
    lr: float = option(3e-4, help="Peak learning rate (AdamW, linear warm-up then constant)", check=greater_than(0))
    warmup_steps: int = option(50, help="Linear warm-up length in steps", check=at_least(0))
    weight_decay: float = option(0.0, help="AdamW weight decay", check=at_least(0))
    clip_grad: float = option(1.0, help="Clip the gradient norm to this value (0: no clipping)", check=at_least(0))
    seed: int = option(0, help="Seed of the head's init and the data order", check=at_least(0))
    dtype: str = option("auto", help="Frozen LLaMA dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32",
                        check=one_of("auto", "bf16", "fp16", "fp32"))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    save_every: int = option(500, help="Checkpoint every N steps (and at the end)", check=at_least(1))
    log_every: int = option(50, help="Log the mean loss every N steps", check=at_least(1))
    resume: bool = option(False, help="Continue from the newest checkpoint in OUT")
    progress: bool = option(True, help="Show a progress bar")
