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
from typing import TYPE_CHECKING, Any, Callable

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
    train_steps: int = option(3000, help="Adapter training steps (stage 1)")
    lr: float = option(3e-3, help="Adapter learning rate (small models learn at larger rates than LLaMA-2-7B)")
    device: str = option("auto", help="auto, cpu or cuda")
    progress: bool = option(True, help="Show progress bars")


@dataclass
class DemoReport:
    corpus: Path
    store: Path
    extraction: "ExtractSummary"
    losses: list[float] = field(default_factory=list)
    listening: "ListeningResult | None" = None
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
        echo(f"[{number}/7] {text}")

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
    adapter = run / "adapter"
    if (adapter / "adapter.json").is_file():
        step(6, f"train: reusing the adapter in {adapter}")
    else:
        step(6, f"train (stage 2 of the system, adapter stage 1): {config.train_steps} steps from {shards}")
        resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*"))
        run_training(TrainConfig(shards=str(shards), llama=str(llama_text), out=str(run),
                                 max_steps=config.train_steps, lr=config.lr, batch_size=config.batch_size,
                                 seed=config.seed, device=config.device, workers=0, progress=config.progress,
                                 log_every=50, save_every=500, resume=resume))
    step(7, "listening test on held-out clips: 'What instrument is playing?'")
    model = MusicLlama.load(adapter, llama_text, device=config.device, encoder=store.encoder)
    listening = listening_test(model, store, _labels(manifest, "eval"), seed=config.seed)
    losses = _losses(run / "log.jsonl")
    report = DemoReport(corpus, store_dir, summary, losses, listening, summary.failures)
    print_report(report, config, echo)
    return report


def print_report(report: DemoReport, config: DemoRunConfig, echo: Callable[[str], None]) -> None:
    summary, listening = report.extraction, report.listening
    store_info: dict[str, Any] = {}
    from mullama.store import FeatureStore

    store_info = FeatureStore.open(str(report.store)).info()
    echo("")
    echo("demo summary")
    echo(f"  extraction: {store_info['clips']} clips in the store ({summary.processed} extracted now, "
         f"{summary.skipped} already there), {len(summary.failures)} failed; {store_info['windows']} windows; "
         f"{human_bytes(store_info['size_bytes'])} in {store_info['partitions']} partitions")
    if summary.processed:
        echo(f"  extraction rate: {summary.clips_per_second:.2f} clips/s over {summary.seconds:.1f} s")
    if report.losses:
        echo(f"  training loss (mean per 50 steps): {report.losses[0]:.3f} -> {report.losses[-1]:.3f} "
             f"over {len(report.losses) * 50} steps")
    if listening is not None:
        accuracy = listening.accuracy
        echo(f"  listening test ({listening.clips} held-out clips, {len(listening.labels)} instruments, "
             f"chance {listening.chance:.0%}): true features {accuracy['true']:.0%}, shuffled between clips "
             f"{accuracy['shuffled']:.0%}, silence {accuracy['silence']:.0%}")
    echo(f"  written under {Path(config.out)}: corpus/, store/, shards/, llama-mini-text/, train/adapter/")
