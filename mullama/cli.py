"""The `mullama` command: wires each subcommand's typed config to the subpackage that does the work."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from typing import TYPE_CHECKING

import typer

from mullama.config import command, option
from mullama.errors import MullamaError
from mullama.formatting import human_bytes

if TYPE_CHECKING:
    from mullama.extract.runner import ExtractSummary

app = typer.Typer(help="mullama: extract MERT features once into a feature store, then train, serve and "
                       "evaluate MU-LLaMA from the store.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, rich_markup_mode=None)
data_app = typer.Typer(help="Datasets: the built-in demo corpus.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(help="Random-weight model folders with real shapes (demo, tests, benchmarks).",
                         no_args_is_help=True, rich_markup_mode=None)
store_app = typer.Typer(help="Inspect, check and export feature stores.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(store_app, name="store")


def echo(text: str = "") -> None:
    typer.echo(text)


# ---------------------------------------------------------------------------------------- demo
from mullama.demo import DemoRunConfig  # noqa: E402


@command(app, "demo", DemoRunConfig, "Run the main job on the built-in demo corpus, locally: render the corpus, "
         "extract it once into a feature store, export shards, train the adapter on a frozen tiny LLaMA, and run "
         "the listening test on held-out clips.")
def demo(config: DemoRunConfig) -> None:
    from mullama.demo import run_demo

    report = run_demo(config, echo)
    if report.failures:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------- data
from mullama.data.demo import DemoConfig  # noqa: E402


@command(data_app, "demo", DemoConfig, "Render the demo corpus (real music21 pieces through FluidSynth) with a "
         "manifest and MusicQA train/eval files.")
def data_demo(config: DemoConfig) -> None:
    from mullama.data.demo import build_demo_corpus

    corpus = build_demo_corpus(config)
    echo(f"wrote {corpus.clips} clips to {corpus.root}/audio")
    echo(f"manifest: {corpus.manifest}\nQA: {corpus.qa_train} (train), {corpus.qa_eval} (eval)")


# ---------------------------------------------------------------------------------------- models
@dataclass
class InitMertConfig:
    out: str = option(help="Folder to write", argument=True)
    size: str = option("tiny", help="tiny, 95m (MERT-v1-95M shapes) or 330m (MERT-v1-330M shapes)")
    seed: int = option(0, help="Random seed for the weights")


@command(models_app, "init-mert", InitMertConfig, "Write a random-weight MERT folder (hub layout) with real shapes.")
def init_mert(config: InitMertConfig) -> None:
    from mullama.extract.init_mert import write_random_mert

    path = write_random_mert(config.out, config.size, config.seed)
    echo(f"wrote random-weight MERT-{config.size} to {path}")


from mullama.model.commands import ImportMuLlamaConfig, InitLlamaConfig  # noqa: E402


@command(models_app, "init-llama", InitLlamaConfig, "Write a random-weight LLaMA folder (Hugging Face layout) "
         "with a SentencePiece tokenizer trained offline on the given text.")
def init_llama(config: InitLlamaConfig) -> None:
    from mullama.model.init_llama import write_random_llama

    path = write_random_llama(config.out, config.size, config.tokenizer_corpus or None, config.seed,
                              config.vocab_size, config.kv_heads, echo=echo)
    echo(f"wrote random-weight LLaMA-{config.size} to {path}")


# ---------------------------------------------------------------------------------------- extract
from mullama.extract.config import ExtractConfig  # noqa: E402


@command(app, "extract", ExtractConfig, "Run MERT once over every clip of INPUT and commit the layer stacks to "
         "a feature store. Re-running skips committed clips; exit code 1 if any clip failed.")
def extract(config: ExtractConfig) -> None:
    from mullama.extract.runner import run_extract

    try:
        summary = run_extract(config)
    except KeyboardInterrupt:
        echo("interrupted: committed partitions are kept; run the same command again to continue")
        raise typer.Exit(130) from None
    print_extract_summary(summary)
    if summary.failures:
        raise typer.Exit(1)


def print_extract_summary(summary: "ExtractSummary") -> None:
    echo(f"store: {summary.store}")
    echo(f"clips: {summary.inputs} in input, {summary.skipped} already committed, {summary.processed} processed "
         f"({summary.ok} ok, {len(summary.failures)} failed)")
    echo(f"windows: {summary.windows}, audio: {summary.audio_seconds / 60:.1f} min, "
         f"time: {summary.seconds:.1f} s, rate: {summary.clips_per_second:.2f} clips/s")
    echo(f"store size: {human_bytes(summary.store_bytes)} in {summary.partitions} partitions")
    if summary.failures:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.failure_reasons().items()))
        echo(f"failed clips ({reasons}):")
        for clip_id, reason in summary.failures[:20]:
            echo(f"  {clip_id}: {reason}")
        if len(summary.failures) > 20:
            echo(f"  ... {len(summary.failures) - 20} more (see `mullama store info --failures`)")


# ---------------------------------------------------------------------------------------- import
@command(app, "import-mu-llama", ImportMuLlamaConfig, "Convert the released MU-LLaMA checkpoint into an adapter "
         "folder for a Hugging Face LLaMA, checking its frozen LLaMA weights against that folder. Exit code 1 if "
         "they differ.")
def import_mu_llama(config: ImportMuLlamaConfig) -> None:
    from mullama.model.importer import import_mu_llama as run_import

    encoder = None
    if config.mert:
        from mullama.extract.encoder import MertEncoder

        encoder = MertEncoder.load(config.mert, device="cpu").identity
    report = run_import(config.checkpoint, config.llama, config.out, query_len=config.query_len, encoder=encoder,
                        tolerance=config.tolerance)
    adapter = report.config
    stage = (f"stage 2 (biases {'on' if adapter.stage2_biases else 'off'}, LoRA rank {adapter.lora_rank})"
             if adapter.stage2 else "stage 1")
    echo(f"wrote {report.tensors_written} tensors to {report.out}: {stage}, last {adapter.adapted_layers} of "
         f"{adapter.num_layers} layers adapted, {adapter.hidden_states} x {adapter.encoder_hidden_size} stacks"
         + (" (LLaMA-1-era names)" if report.legacy_names else ""))
    echo(f"ignored {report.ignored} MERT tensors; checked {report.frozen_checked} frozen LLaMA tensors")
    for note in report.notes:
        echo(f"note: {note}")
    if report.unknown:
        echo(f"unrecognised keys ({len(report.unknown)}): {', '.join(report.unknown[:10])}")
    if not report.llama_matches:
        for line in report.missing:
            echo(f"MISSING in {config.llama}: {line}")
        for line in report.differing:
            echo(f"DIFFERS: {line}")
        echo(f"the frozen LLaMA weights of the checkpoint do not match {config.llama}: answers will be wrong "
             "unless you give the LLaMA it was trained on")
        raise typer.Exit(1)
    echo(f"frozen LLaMA weights match {config.llama}")


# ---------------------------------------------------------------------------------------- store
@dataclass
class StoreInfoConfig:
    store: str = option(help="Feature store path or URL", argument=True)
    json: bool = option(False, help="Print machine-readable JSON")
    failures: bool = option(False, help="List every failed clip with its reason")


@command(store_app, "info", StoreInfoConfig, "Summarise a feature store: encoder, settings, clips, failures, size.")
def store_info(config: StoreInfoConfig) -> None:
    from mullama.store import FeatureStore

    store = FeatureStore.open(config.store)
    info = store.info()
    if config.failures:
        info["failed"] = [{"clip_id": r.clip_id, "source": r.source, "reason": r.reason} for r in store.failures()]
    if config.json:
        echo(json.dumps(info, indent=2))
        return
    encoder = info["encoder"]
    echo(f"store: {info['url']} (schema {info['schema_version']}, written by mullama {info['written_by']})")
    echo(f"encoder: {encoder['name']}  stack {encoder['hidden_states']} x {encoder['hidden_size']}  "
         f"{encoder['sample_rate']} Hz  weights {encoder['weights_hash'][:12]}")
    settings = info["settings"]
    echo(f"windows: {settings['window_seconds']} s (min trailing {settings['min_window_seconds']} s), "
         f"dtype {settings['dtype']}")
    echo(f"clips: {info['clips']} ok, {info['failed_clips']} failed; windows: {info['windows']}; "
         f"audio: {info['audio_hours']} h")
    echo(f"partitions: {info['partitions']} committed, {info['uncommitted_partitions']} uncommitted; "
         f"size: {human_bytes(info['size_bytes'])}")
    if info["failure_reasons"]:
        echo("failure reasons: " + ", ".join(f"{k} {v}" for k, v in info["failure_reasons"].items()))
    for row in info.get("failed", []):
        echo(f"  {row['clip_id']}: {row['reason']}")


@dataclass
class StoreVerifyConfig:
    store: str = option(help="Feature store path or URL", argument=True)


@command(store_app, "verify", StoreVerifyConfig, "Check every committed file against the checksums taken at "
         "commit; exit code 1 naming each missing or altered file.")
def store_verify(config: StoreVerifyConfig) -> None:
    from mullama.store import FeatureStore

    store = FeatureStore.open(config.store, strict=False)
    problems = store.verify()
    for problem in problems:
        echo(f"CORRUPT {problem}")
    if problems:
        echo(f"{len(problems)} problem(s) in {config.store}")
        raise typer.Exit(1)
    echo(f"ok: {len(store.commits())} partitions, {len(store)} clips match their commit checksums")


@dataclass
class StoreGcConfig:
    store: str = option(help="Feature store path or URL", argument=True)


@command(store_app, "gc", StoreGcConfig, "Delete partitions that were never committed (left by killed writers). "
         "Do not run while an extraction writes to the same store.")
def store_gc(config: StoreGcConfig) -> None:
    from mullama.store import FeatureStore

    removed = FeatureStore.open(config.store).remove_uncommitted()
    echo(f"removed {len(removed)} uncommitted partition(s)")


from mullama.store.config import ExportShardsConfig  # noqa: E402


@command(store_app, "export-shards", ExportShardsConfig, "Write WebDataset shards (one sample per clip: its stack "
         "and all its QA pairs) and shards.json, for training that never touches audio.")
def store_export_shards(config: ExportShardsConfig) -> None:
    from mullama.store.shards import export_shards

    report = export_shards(config)
    echo(f"wrote {report.shards} shard(s) to {report.out}: {report.clips} clips, {report.pairs} QA pairs, "
         f"{report.text_items} text-only items")
    if report.missing_clips or report.failed_clips:
        echo(f"skipped {report.dropped_pairs} QA pairs: {len(report.missing_clips)} clip(s) not in the store "
             f"(e.g. {', '.join(report.missing_clips[:3]) or '-'}), {len(report.failed_clips)} failed in "
             f"extraction (e.g. {', '.join(report.failed_clips[:3]) or '-'}); listed in shards.json")


# ---------------------------------------------------------------------------------------- train
from mullama.train.config import TrainConfig  # noqa: E402


@command(app, "train", TrainConfig, "Train the MU-LLaMA adapter (stage 1) or its LoRA/bias fine-tuning (stage 2) "
         "from cached stacks in WebDataset shards; the encoder never runs. Resumable with --resume; "
         "several ranks with torchrun or --ray.", config_argument=True)
def train(config: TrainConfig) -> None:
    if config.ray:
        from mullama.train.ray_launcher import train_with_ray

        out = train_with_ray(config)
        echo(f"trained with Ray Train; run folder: {out}")
        return
    from mullama.train.trainer import run_training

    result = run_training(config)
    if result.adapter is None:
        if config.stop_after:
            echo(f"stopped after step {result.steps} with a checkpoint in {result.out / 'checkpoints'}; "
                 "continue with --resume")
        return
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (float("nan"),) * 2
    echo(f"trained {result.steps} steps ({result.tokens} tokens this session, {result.seconds:.0f} s); "
         f"loss {first:.3f} -> {last:.3f}")
    echo(f"adapter: {result.adapter}   log: {result.out / 'log.jsonl'}")


# ---------------------------------------------------------------------------------------- entry point
def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except MullamaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
