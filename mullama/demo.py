"""`mullama demo`: the whole system end to end on the built-in corpus, on this machine, no cluster.

Stage 1 extracts the corpus once into a feature store; stage 2 exports shards, trains the adapter on
a frozen small LLaMA without touching audio again, and runs the listening test on held-out clips.
Every step is skipped when its output already exists, so re-running the demo is cheap and a killed
demo continues where it stopped.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mullama.config import option
from mullama.data.demo import DemoConfig, build_demo_corpus
from mullama.extract.config import ExtractConfig
from mullama.formatting import human_bytes
from mullama.store.config import ExportShardsConfig
from mullama.train.config import TrainConfig

if TYPE_CHECKING:
    from mullama.eval.listening import ListeningResult
    from mullama.extract.runner import ExtractSummary


@dataclass
class DemoRunConfig:
    out: str = option("demo-run", help="Folder for everything the demo writes")
    clips: int = option(64, help="Clips in the demo corpus (a quarter is held out for the listening test)")
    seed: int = option(0, help="Seed for the corpus, the random weights and training")
    mert_size: str = option("tiny", help="Random MERT shapes: tiny, 95m or 330m")
    workers: int = option(1, help="Decoding processes")
    batch_size: int = option(8, help="Windows per encoder call, and examples per training batch")
    text_steps: int = option(400, help="Steps of text-only pre-training of the mini LLaMA")
    stage1_steps: int = option(1500, help="Stage-1 training steps (the adapter)")
    stage1_lr: float = option(3e-3, help="Stage-1 learning rate (small models learn at larger rates than LLaMA-2-7B)")
    stage2_steps: int = option(1500, help="Stage-2 training steps (LLaMA norms, new biases and LoRA; adapter frozen)")
    stage2_lr: float = option(1e-3, help="Stage-2 learning rate")
    device: str = option("auto", help="auto, cpu or cuda")
    progress: bool = option(True, help="Show progress bars")


@dataclass
class DemoReport:
    corpus: Path
    store: Path
    extraction: "ExtractSummary"
    losses: dict[int, list[float]] = field(default_factory=dict)  # stage -> logged losses
    listening: dict[int, "ListeningResult"] = field(default_factory=dict)  # stage -> listening test
    failures: list[tuple[str, str]] = field(default_factory=list)


def _labels(manifest: Path, split: str) -> dict[str, str]:
    with open(manifest, newline="") as handle:
        return {row["clip_id"]: row["instrument"] for row in csv.DictReader(handle) if row["split"] == split}


def _losses(log: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()] if log.is_file() else []


def run_demo(config: DemoRunConfig, echo: Callable[[str], None] = print) -> DemoReport:
    from mullama.eval.listening import listening_test
    from mullama.extract.init_mert import write_random_mert
    from mullama.extract.runner import run_local
    from mullama.model import MusicLlama
    from mullama.model.init_llama import write_random_llama
    from mullama.store import FeatureStore
    from mullama.store.shards import export_shards
    from mullama.train.text_lm import pretrain_text_lm
    from mullama.train.trainer import run_training

    out = Path(config.out)
    corpus, mert, store_dir = out / "corpus", out / f"mert-{config.mert_size}", out / "store"
    shards, llama, llama_text, run = out / "shards", out / "llama-mini", out / "llama-mini-text", out / "train"
    manifest = corpus / "manifest.csv"

    def step(number: int, text: str) -> None:
        echo(f"[{number}/8] {text}")

    if manifest.is_file():
        step(1, f"demo corpus: reusing {corpus}")
    else:
        step(1, f"demo corpus: rendering {config.clips} clips with FluidSynth into {corpus}")
        build_demo_corpus(DemoConfig(out=str(corpus), clips=config.clips, seed=config.seed))
    if (mert / "config.json").is_file():
        step(2, f"encoder: reusing random-weight MERT-{config.mert_size} in {mert}")
    else:
        step(2, f"encoder: writing random-weight MERT-{config.mert_size} to {mert}")
        write_random_mert(mert, config.mert_size, config.seed)
    step(3, f"extract (stage 1, the only step that reads audio): {manifest} -> {store_dir}")
    summary = run_local(ExtractConfig(input=str(manifest), mert=str(mert), store=str(store_dir),
                                      workers=config.workers, batch_size=config.batch_size, device=config.device,
                                      progress=config.progress))
    store = FeatureStore.open(str(store_dir))
    if (shards / "shards.json").is_file():
        step(4, f"shards: reusing {shards}")
    else:
        step(4, f"shards: exporting the training split's QA pairs to {shards}")
        export_shards(ExportShardsConfig(store=str(store_dir), out=str(shards), qa=[str(corpus / "qa_train.json")],
                                         seed=config.seed, progress=config.progress))
    if (llama_text / "config.json").is_file():
        step(5, f"LLaMA: reusing the text-pretrained mini LLaMA in {llama_text}")
    else:
        step(5, f"LLaMA: random mini LLaMA (8 x 128) with a SentencePiece tokenizer, then {config.text_steps} "
                "steps of text-only pre-training (no audio), then frozen")
        write_random_llama(llama, "mini", corpus=corpus / "qa_train.json", seed=config.seed)
        pretrain_text_lm(llama, [corpus / "qa_train.json"], llama_text, steps=config.text_steps, seed=config.seed)
    listening: dict[int, ListeningResult] = {}
    losses: dict[int, list[float]] = {}
    held_out = _labels(manifest, "eval")
    for stage, steps, lr in ((1, config.stage1_steps, config.stage1_lr), (2, config.stage2_steps, config.stage2_lr)):
        folder = run / f"stage{stage}"
        adapter = folder / "adapter"
        if (adapter / "adapter.json").is_file():
            step(5 + stage, f"train stage {stage}: reusing {adapter}")
        else:
            what = "the adapter" if stage == 1 else "LLaMA's norms, new biases and LoRA (adapter frozen)"
            step(5 + stage, f"train stage {stage} ({what}): {steps} steps from {shards}, no audio")
            resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("step-*"))
            run_training(TrainConfig(shards=str(shards), llama=str(llama_text), out=str(folder), stage=stage,
                                     init_adapter=str(run / "stage1" / "adapter") if stage == 2 else "",
                                     max_steps=steps, lr=lr, batch_size=config.batch_size, seed=config.seed,
                                     device=config.device, workers=0, progress=config.progress, log_every=50,
                                     save_every=500, resume=resume))
        losses[stage] = _losses(folder / "log.jsonl")
        model = MusicLlama.load(adapter, llama_text, device=config.device, encoder=store.encoder)
        listening[stage] = listening_test(model, store, held_out, seed=config.seed)
    step(8, "listening test on held-out clips ('What instrument is playing?'): see the summary")
    report = DemoReport(corpus, store_dir, summary, losses, listening, summary.failures)
    print_report(report, config, echo)
    return report


def print_report(report: DemoReport, config: DemoRunConfig, echo: Callable[[str], None]) -> None:
    from mullama.store import FeatureStore

    summary = report.extraction
    info = FeatureStore.open(str(report.store)).info()
    echo("")
    echo("demo summary")
    echo(f"  extraction: {info['clips']} clips in the store ({summary.processed} extracted now, "
         f"{summary.skipped} already there), {len(summary.failures)} failed; {info['windows']} windows; "
         f"{human_bytes(info['size_bytes'])} in {info['partitions']} partitions")
    if summary.processed:
        echo(f"  extraction rate: {summary.clips_per_second:.2f} clips/s over {summary.seconds:.1f} s")
    for stage, losses in report.losses.items():
        if losses:
            echo(f"  stage {stage} training loss (mean per 50 steps): {losses[0]:.3f} -> {losses[-1]:.3f} "
                 f"(min {min(losses):.3f})")
    for stage, result in report.listening.items():
        accuracy = result.accuracy
        echo(f"  listening test after stage {stage} ({result.clips} held-out clips, {len(result.labels)} instruments,"
             f" chance {result.chance:.0%}): true features {accuracy['true']:.0%}, shuffled between clips "
             f"{accuracy['shuffled']:.0%}, silence {accuracy['silence']:.0%}")
    echo(f"  written under {Path(config.out)}: corpus/, store/, shards/, llama-mini-text/, train/stage1|2/adapter/")
