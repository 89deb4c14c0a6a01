"""The `mullama` command: registers each subcommand's typed config and hands it to its subpackage.

Configs live with their subpackages (light modules, so `--help` is instant); the work is imported
when a command runs. Every command returns a report that formats itself (`lines()`) and says its
exit code: 0, 1 when some items of a batch failed, 2 (via MullamaError) for a user mistake.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol

import typer

from mullama.config import command
from mullama.data.qagen.config import QaGenerateConfig, QaSplitConfig
from mullama.errors import MullamaError
from mullama.eval.config import (
    EvalChoiceConfig,
    EvalGenerateConfig,
    EvalReportConfig,
    EvalScoreConfig,
    InstallWordnetConfig,
)
from mullama.extract.config import ExtractConfig
from mullama.fixtures.config import (
    DemoConfig,
    DemoRunConfig,
    InitAudioldm2Config,
    InitLlamaConfig,
    InitMertConfig,
    InitMusicgenConfig,
    InitVisionConfig,
)
from mullama.hub_config import ModelsFetchConfig, ModelsInfoConfig
from mullama.knn.config import IndexBuildConfig, IndexEvalConfig, IndexQueryConfig
from mullama.model.config import ImportMuLlamaConfig
from mullama.serve.config import AskConfig, CaptionConfig, EditConfig, GenerateConfig, ServeConfig
from mullama.store.config import ExportShardsConfig, StoreGcConfig, StoreInfoConfig, StoreVerifyConfig
from mullama.train.config import GeneratorTargetsConfig, GeneratorTrainConfig, TrainConfig

app = typer.Typer(help="mullama: extract MERT features once into a feature store, then train, serve and "
                       "evaluate MU-LLaMA from the store.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, rich_markup_mode=None)
data_app = typer.Typer(help="Datasets: the built-in demo corpus.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(help="Models from the Hugging Face Hub (fetch for air-gapped machines, info), and "
                              "random-weight model folders with real shapes (demo, tests, benchmarks).",
                         no_args_is_help=True, rich_markup_mode=None)
store_app = typer.Typer(help="Inspect, check and export feature stores.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
index_app = typer.Typer(help="Similar-track search: FAISS indexes over a feature store's clips.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(store_app, name="store")
app.add_typer(index_app, name="index")
eval_app = typer.Typer(help="Evaluation from the store, never touching audio: answers with listening controls, the "
                            "paper's metrics and standard ones, multiple choice, reports.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(eval_app, name="eval")
qa_app = typer.Typer(help="Training data: MusicQA-style question-answer pairs from captions and tags, with a local or "
                          "remote LLM or templates, split by clip.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(qa_app, name="qa")
generator_app = typer.Typer(help="MuMu-LLaMA's music generator: output tokens and a projector into MusicGen's "
                                 "conditioning, trained from stored targets.", no_args_is_help=True,
                            rich_markup_mode=None)
app.add_typer(generator_app, name="generator")


class Report(Protocol):
    exit_code: int

    def lines(self) -> list[str]: ...


def emit(report: Report) -> None:
    for line in report.lines():
        typer.echo(line)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@command(app, "demo", DemoRunConfig, "Run the main job on the built-in demo corpus, locally: render the corpus, "
         "extract it once into a feature store, export shards, train the adapter on a frozen tiny LLaMA, and run "
         "the listening test on held-out clips.")
def demo(config: DemoRunConfig) -> None:
    from mullama.fixtures.demo import run_demo

    report = run_demo(config, typer.echo)
    if report.failures:
        raise typer.Exit(1)


@command(data_app, "demo", DemoConfig, "Render the demo corpus (real music21 pieces through FluidSynth) with a "
         "manifest and MusicQA train/eval files.")
def data_demo(config: DemoConfig) -> None:
    from mullama.fixtures.corpus import build_demo_corpus

    emit(build_demo_corpus(config))


@command(models_app, "fetch", ModelsFetchConfig, "Download the files mullama loads (configs, tokenizer, weights in "
         "safetensors when the repo has them; never its code) of each Hub id into the Hugging Face cache (HF_HUB_CACHE "
         "or HF_HOME) or --to FOLDER, so that machines without the internet run the same commands by id.")
def models_fetch(config: ModelsFetchConfig) -> None:
    from mullama.hub import fetch_models

    emit(fetch_models(config.ids, config.revision, config.to, config.progress))


@command(models_app, "info", ModelsInfoConfig, "Show where a model folder or Hub id resolves (without downloading "
         "when HF_HUB_OFFLINE is set): its hub id, commit, kind and weights.")
def models_info(config: ModelsInfoConfig) -> None:
    from mullama.hub import model_info

    emit(model_info(config.model))


@command(models_app, "init-mert", InitMertConfig, "Write a random-weight MERT folder (hub layout) with real shapes.")
def init_mert(config: InitMertConfig) -> None:
    from mullama.fixtures.mert import write_random_mert

    path = write_random_mert(config.out, config.size, config.seed)
    typer.echo(f"wrote random-weight MERT-{config.size} to {path}")


@command(models_app, "init-vit", InitVisionConfig, "Write a random-weight ViT folder (transformers ViTModel): base is "
         "ViT-B/16 at 224 x 224, 197 tokens of 768 per image.")
def init_vit(config: InitVisionConfig) -> None:
    from mullama.fixtures.vision import write_random_encoder

    path = write_random_encoder("vit", config.out, config.size, config.seed)
    typer.echo(f"wrote random-weight ViT-{config.size} to {path}")


@command(models_app, "init-vivit", InitVisionConfig, "Write a random-weight ViViT folder (transformers VivitModel): "
         "base is ViViT-B over 32 frames of 224 x 224, 3137 tokens of 768 per clip.")
def init_vivit(config: InitVisionConfig) -> None:
    from mullama.fixtures.vision import write_random_encoder

    path = write_random_encoder("vivit", config.out, config.size, config.seed)
    typer.echo(f"wrote random-weight ViViT-{config.size} to {path}")


@command(models_app, "init-musicgen", InitMusicgenConfig, "Write a random-weight MusicGen folder (transformers "
         "MusicgenForConditionalGeneration with its processor): small and medium are the published shapes.")
def init_musicgen(config: InitMusicgenConfig) -> None:
    from mullama.fixtures.musicgen import write_random_musicgen

    path = write_random_musicgen(config.out, config.size, config.seed, tokenizer_texts(config.text), config.melody)
    typer.echo(f"wrote random-weight MusicGen-{'Melody-' if config.melody else ''}{config.size} to {path}")


@command(models_app, "init-audioldm2", InitAudioldm2Config, "Write a random-weight AudioLDM2 folder (a diffusers "
         "AudioLDM2Pipeline with its tokenizers): MuMu-LLaMA's alternative music decoder, for trying the "
         "pipeline offline.")
def init_audioldm2(config: InitAudioldm2Config) -> None:
    from mullama.fixtures.audioldm2 import write_random_audioldm2

    path = write_random_audioldm2(config.out, config.size, config.seed, tokenizer_texts(config.text))
    typer.echo(f"wrote random-weight AudioLDM2-{config.size} to {path}")


def tokenizer_texts(path: str) -> list[str]:
    """The lines of --text that train a random decoder's tokenizers ([] : the built-in descriptions)."""
    if not path:
        return []
    if not Path(path).is_file():
        raise MullamaError(f"--text {path} is not a file; give a text file of descriptions, one per line")
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not texts:
        raise MullamaError(f"--text {path} has no non-empty line to train the tokenizer on")
    return texts


@command(models_app, "init-llama", InitLlamaConfig, "Write a random-weight LLaMA folder (Hugging Face layout) "
         "with a SentencePiece tokenizer trained offline on the given text.")
def init_llama(config: InitLlamaConfig) -> None:
    from mullama.fixtures.llama import write_random_llama

    path = write_random_llama(config.out, config.size, config.tokenizer_corpus or None, config.seed,
                              config.vocab_size, config.kv_heads, echo=typer.echo)
    typer.echo(f"wrote random-weight LLaMA-{config.size} to {path}")


@command(app, "extract", ExtractConfig, "Run MERT once over every clip of INPUT and commit the layer stacks to "
         "a feature store. Re-running skips committed clips; exit code 1 if any clip failed.")
def extract(config: ExtractConfig) -> None:
    from mullama.extract.runner import run_extract

    try:
        summary = run_extract(config)
    except KeyboardInterrupt:
        typer.echo("interrupted: committed partitions are kept; run the same command again to continue")
        raise typer.Exit(130) from None
    if config.index:
        from mullama.knn.build import index_after_extract

        for line in summary.lines():
            typer.echo(line)
        report = index_after_extract(config.store, config.index, config.ray, config.progress)
        report.exit_code = max(report.exit_code, summary.exit_code)  # failed clips still make the exit code 1
        summary = report
    emit(summary)


@command(app, "import-mu-llama", ImportMuLlamaConfig, "Convert the released MU-LLaMA checkpoint into an adapter "
         "folder for a Hugging Face LLaMA, checking its frozen LLaMA weights against that folder. Exit code 1 if "
         "they differ.")
def import_mu_llama(config: ImportMuLlamaConfig) -> None:
    from mullama.extract.mert import MertSpec
    from mullama.model.importer import import_mu_llama as run_import

    encoder = MertSpec.read(config.mert).identity if config.mert else None
    emit(run_import(config.checkpoint, config.llama, config.out, query_len=config.query_len, encoder=encoder,
                    tolerance=config.tolerance))


@command(store_app, "info", StoreInfoConfig, "Summarise a feature store: encoder, settings, clips, failures, size.")
def store_info(config: StoreInfoConfig) -> None:
    from mullama.store.reports import store_info as run

    emit(run(config))


@command(store_app, "verify", StoreVerifyConfig, "Check every committed file against the checksums taken at "
         "commit; exit code 1 naming each missing or altered file.")
def store_verify(config: StoreVerifyConfig) -> None:
    from mullama.store.reports import store_verify as run

    emit(run(config))


@command(store_app, "gc", StoreGcConfig, "Delete partitions that were never committed and that no live writer "
         "holds (left by killed writers), and the leases of dead writers. Safe while extractions run.")
def store_gc(config: StoreGcConfig) -> None:
    from mullama.store.reports import store_gc as run

    emit(run(config))


@command(store_app, "export-shards", ExportShardsConfig, "Write WebDataset shards (one sample per clip: its stack "
         "and all its QA pairs) and shards.json, for training that never touches audio.")
def store_export_shards(config: ExportShardsConfig) -> None:
    from mullama.store.export import export_shards

    emit(export_shards(config))


@command(app, "train", TrainConfig, "Train the MU-LLaMA adapter (stage 1) or its LoRA/bias fine-tuning (stage 2) "
         "from cached stacks in WebDataset shards; the encoder never runs. Resumable with --resume; "
         "several ranks with torchrun or --ray.", config_argument=True)
def train(config: TrainConfig) -> None:
    if config.ray:
        from mullama.train.ray_launcher import train_with_ray

        typer.echo(f"trained with Ray Train; run folder: {train_with_ray(config)}")
        return
    from mullama.train.trainer import run_training

    emit(run_training(config))


@command(index_app, "build", IndexBuildConfig, "Build (or --update) a FAISS index of the store's clips in "
         "STORE/indexes/NAME: index type from the clip count, dimension and memory budget, trained on a bounded "
         "sample, search settings tuned to a target recall against exact search. With --captions: a text index of "
         "the clips' captions, searched by words.")
def index_build(config: IndexBuildConfig) -> None:
    from mullama.knn.build import build_index

    emit(build_index(config))


@command(index_app, "query", IndexQueryConfig, "Nearest clips of a stored clip (--clip), an audio file (--audio, "
         "encoded with --mert), a file of clip ids (--batch) or words (--text, in a text index), with scores, source "
         "and duration. Exit code 1 when some ids of a batch are unknown.")
def index_query(config: IndexQueryConfig) -> None:
    from mullama.knn.query import run_query

    emit(run_query(config))


@command(index_app, "eval", IndexEvalConfig, "Recall@k of an index against exact search, and with --labels the "
         "precision@k and nDCG@k of label agreement (same-source neighbours skipped), for the index and any "
         "--recipe side by side; with --queries (a text index), the same of word queries against --labels.")
def index_eval(config: IndexEvalConfig) -> None:
    from mullama.knn.evaluate import evaluate_index

    emit(evaluate_index(config))


@command(app, "ask", AskConfig, "Ask about one track (a stored clip, or an audio file encoded as extraction would) "
         "and watch the answer stream in; --chat keeps the conversation going.")
def ask(config: AskConfig) -> None:
    from mullama.serve.ask import run_ask

    emit(run_ask(config))


@command(app, "caption", CaptionConfig, "Caption every clip of a store (or a --clips list) from its stored stacks: "
         "batched, seeded, resumable, on this machine or a Ray cluster (--ray). Exit code 1 when some ids are "
         "unknown or some clips failed.")
def caption(config: CaptionConfig) -> None:
    from mullama.serve.caption import run_caption

    emit(run_caption(config))


@command(generator_app, "targets", GeneratorTargetsConfig, "Encode every caption of the pairs files once with the "
         "MusicGen folder's text encoder into a targets folder (resumable): generator training never runs T5.")
def generator_targets(config: GeneratorTargetsConfig) -> None:
    from mullama.train.generator import run_targets

    emit(run_targets(config))


@command(generator_app, "train", GeneratorTrainConfig, "Train the output tokens and the projector against stored "
         "targets through the frozen LLaMA and adapter (edits read their clip's stacks from --store); resumable "
         "with --resume.", config_argument=True)
def generator_train(config: GeneratorTrainConfig) -> None:
    from mullama.train.generator import run_generator_training

    emit(run_generator_training(config))


@command(app, "generate", GenerateConfig, "Generate music from a request in words: the generator's conditioning "
         "through a frozen MusicGen, written as WAV or FLAC.")
def generate(config: GenerateConfig) -> None:
    from mullama.serve.generate import run_generate

    emit(run_generate(config))


@command(app, "edit", EditConfig, "Edit a recording by a request in words: the LLaMA hears it through the adapter, "
         "MusicGen-Melody follows its melody; written as WAV or FLAC.")
def edit(config: EditConfig) -> None:
    from mullama.serve.generate import run_edit

    emit(run_edit(config))


@command(app, "serve", ServeConfig, "Serve the model over HTTP: OpenAI-compatible chat about a stored clip (clip_id) "
         "or uploaded audio (input_audio), streamed or whole, with dynamic batching; similar tracks; a web page at /; "
         "Prometheus metrics. Binds 127.0.0.1 unless --host says otherwise.")
def serve(config: ServeConfig) -> None:
    from mullama.serve.server import run_serve

    emit(run_serve(config, typer.echo))


@command(qa_app, "generate", QaGenerateConfig, "Write MusicQA-style pairs for every clip of SOURCE (a MusicCaps CSV, "
         "a tags file, or the demo corpus): four description answers and five open question-answer pairs per clip, "
         "from a local model, an OpenAI-compatible endpoint, or templates; validated, retried, resumable.")
def qa_generate(config: QaGenerateConfig) -> None:
    from mullama.data.qagen.qa_pairs import write_qa_pairs

    emit(write_qa_pairs(config))


@command(qa_app, "split", QaSplitConfig, "Split generated pairs by clip into MusicQA pre-training, fine-tuning and "
         "evaluation files, with a mapping back to the sources and the manifest `mullama extract` reads.")
def qa_split(config: QaSplitConfig) -> None:
    from mullama.data.qagen.split import run_qa_split

    emit(run_qa_split(config))


@command(eval_app, "generate", EvalGenerateConfig, "Answer every question of a MusicQA eval file from stored stacks "
         "(no audio, no encoder), with the listening controls and audio-blind baselines beside the model. Batched, "
         "seeded, resumable; exit code 1 when some pairs' clips are not in the store.")
def eval_generate(config: EvalGenerateConfig) -> None:
    from mullama.eval.answering import answer_questions

    emit(answer_questions(config))


@command(eval_app, "score", EvalScoreConfig, "Score an answers file: the paper's metrics exactly as its script "
         "computed them (character BLEU, METEOR, ROUGE-L recall, BERTScore recall) and standard ones, per condition, "
         "overall and per question; cached, so re-scoring is instant.")
def eval_score(config: EvalScoreConfig) -> None:
    from mullama.eval.score import run_score

    emit(run_score(config))


@command(eval_app, "choice", EvalChoiceConfig, "Multiple-choice listening questions scored by the model's "
         "likelihood of each option (MuChoMusic's protocol), with shuffled and silence controls.")
def eval_choice(config: EvalChoiceConfig) -> None:
    from mullama.eval.choice import run_choice

    emit(run_choice(config))


@command(eval_app, "report", EvalReportConfig, "Render report.md, report.json and report.png from a folder's "
         "scores.json and choice.json: the model, its controls and the paper's published rows.")
def eval_report(config: EvalReportConfig) -> None:
    from mullama.eval.report import render_report

    emit(render_report(config))


@command(eval_app, "install-wordnet", InstallWordnetConfig, "Copy the WordNet corpus (Debian's wordnet-base and "
         "wordnet-sense-index) where NLTK finds it, with the lexnames file NLTK needs: METEOR uses it.")
def eval_install_wordnet(config: InstallWordnetConfig) -> None:
    from mullama.eval.wordnet import install_wordnet

    emit(install_wordnet(config.source, config.out))


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except MullamaError as exc:
        typer.echo(f"error: {exc}", err=True)
        # Requests abandoned beside the one that failed (an object store's concurrent reads) are collected at
        # exit and would each print "Exception ignored in ...": the line above already says what failed.
        sys.unraisablehook = lambda _unraisable: None
        sys.exit(2)


if __name__ == "__main__":
    main()
