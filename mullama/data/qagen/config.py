"""Configs of `mullama qa generate` and `mullama qa split` (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import at_least, between, device_name, greater_than, non_empty, one_of, option, path_given


@dataclass
class QaGenerateConfig:
    source: str = option(help="A MusicCaps CSV, a tags CSV/TSV/JSONL (MagnaTagATune style), or the demo corpus "
                              "folder; a path or an s3:// URL", argument=True, check=path_given)
    out: str = option(help="Output folder, a path or s3://bucket/prefix: qa.jsonl (one line per clip), "
                           "failures.jsonl, settings.json", check=path_given)
    llm: str = option(help="A Hugging Face model folder (run locally, batched), an OpenAI-compatible endpoint "
                           "(http://host:port/v1), or 'template' (no LLM: answers built from structured tags)",
                      check=non_empty)
    llm_model: str = option("", help="Endpoint model name (default: the first the endpoint lists)")
    api_key: str = option("", help="Endpoint API key (default: none)")
    limit: int = option(0, help="Only the first N clips of the source (0: all)", check=at_least(0))
    seed: int = option(0, help="Sampling seed (each batch and attempt draws from its own seed)", check=at_least(0))
    batch_size: int = option(8, help="Local model: prompts generated together", check=at_least(1))
    concurrency: int = option(8, help="Endpoint: requests in flight at once", check=at_least(1))
    max_attempts: int = option(5, help="Tries per request before the clip is recorded as failed (as published: 5)",
                               check=at_least(1))
    max_new_tokens: int = option(512, help="Longest LLM output per request, in tokens", check=at_least(1))
    min_words: int = option(2, help="Shortest acceptable answer, in words", check=at_least(1))
    max_words: int = option(150, help="Longest acceptable answer, in words", check=at_least(1))
    retry_failed: bool = option(False, help="Try again the clips an earlier run recorded as failed")
    overwrite: bool = option(False, help="Start again instead of resuming (deletes the folder's earlier results)")
    device: str = option("auto", help="Local model: auto, cpu, cuda or cuda:N", check=device_name)
    dtype: str = option("auto", help="Local model dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16",
                        check=one_of("auto", "fp32", "bf16", "fp16"))
    ray: str = option("", help="Spread a local-model run over a Ray cluster, one model replica per actor: 'local', "
                               "'auto' or a cluster address")
    ray_actors: int = option(0, help="Ray: replicas (0: one per GPU, or 2 on a CPU-only cluster)", check=at_least(0))
    ray_gpus_per_actor: float = option(1.0, help="Ray: GPUs per replica when the cluster has GPUs",
                                       check=greater_than(0))
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class QaSplitConfig:
    qa: str = option(help="A `mullama qa generate` output folder (or its qa.jsonl)", argument=True, check=path_given)
    out: str = option(help="Folder for MusicQA_pretrain.json, MusicQA_finetune.json, MusicQA_eval.json, "
                           "mapping.csv and manifest.csv", check=path_given)
    eval_fraction: float = option(0.1, help="Share of clips held out for evaluation", check=between(0, 1))
    seed: int = option(0, help="Seed of the split by clip", check=at_least(0))
    audio_root: str = option("", help="Folder holding the clips' audio as CLIP_ID files (MusicCaps downloads); "
                                      "used for manifest paths the source did not give")
    overwrite: bool = option(False, help="Replace files an earlier split wrote")
