"""Bad options and inputs are one-line errors before any work starts; unsafe manifest rows are never read."""

import dataclasses
import json
import subprocess
import sys
import typing

import pytest

from mullama.config import REQUIRED, validate
from mullama.data.manifest import resolve_sources
from mullama.data.musicqa import QAPair, write_musicqa
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
from mullama.fixtures.config import DemoConfig, DemoRunConfig, InitLlamaConfig, InitMertConfig, InitVisionConfig
from mullama.knn.config import IndexBuildConfig, IndexEvalConfig, IndexQueryConfig
from mullama.model.config import ImportMuLlamaConfig
from mullama.serve.config import AskConfig, CaptionConfig, ServeConfig
from mullama.store.config import ExportShardsConfig
from mullama.train.config import TrainConfig

CONFIGS = [AskConfig, CaptionConfig, ServeConfig, QaGenerateConfig, QaSplitConfig, EvalGenerateConfig, EvalScoreConfig,
           EvalChoiceConfig, EvalReportConfig, InstallWordnetConfig, ExtractConfig, ExportShardsConfig, TrainConfig,
           DemoConfig, DemoRunConfig, InitMertConfig, InitVisionConfig, InitLlamaConfig, ImportMuLlamaConfig,
           IndexBuildConfig, IndexQueryConfig, IndexEvalConfig]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_mert):
    """A real export, so that a run folder would be created if a bad option got through."""
    from mullama.store.export import export_shards
    from tests.helpers import tone_store

    root = tmp_path_factory.mktemp("options")
    ids = tone_store(root, tiny_mert, 2, base_freq=200.0)
    write_musicqa(root / "qa.json", [QAPair(clip_id, "What is it?", "A tone.") for clip_id in ids])
    export_shards(ExportShardsConfig(store=str(root / "store"), out=str(root / "shards"), qa=[str(root / "qa.json")],
                                     progress=False))
    return root / "shards"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag, value", [("--partition-size", "0"), ("--window-seconds", "0"),
                                         ("--window-seconds", "-5"), ("--dtype", "int8")])
def test_bad_extract_options_are_one_line_errors_and_create_no_store(flag, value, audio_folder, tiny_mert, tmp_path):
    store = tmp_path / "store"
    result = run_cli("extract", str(audio_folder), "--mert", str(tiny_mert), "--store", str(store), "--workers", "0",
                     flag, value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} ") and "Traceback" not in result.stderr
    assert not store.exists()


@pytest.mark.parametrize("flag, value", [("--max-steps", "-5"), ("--save-every", "0"), ("--log-every", "0"),
                                         ("--lr", "nan"), ("--min-lr", "1"), ("--out", "")])
def test_bad_train_options_are_one_line_errors_and_create_no_run(flag, value, shards, tiny_llama, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--shards", str(shards), "--llama", str(tiny_llama), "--out", str(out), "--workers", "0",
                     "--device", "cpu", "--no-progress", flag, value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} ") and "Traceback" not in result.stderr
    assert not out.exists()


def test_python_callers_get_the_same_checks(shards, tiny_llama, tmp_path):
    from mullama.store.export import export_shards
    from mullama.train.trainer import run_training

    with pytest.raises(MullamaError, match="^--save-every 0: must be at least 1$"):
        run_training(TrainConfig(shards=str(shards), llama=str(tiny_llama), out=str(tmp_path / "run"), save_every=0))
    with pytest.raises(MullamaError, match="^--shard-mb 0.0: must be greater than 0$"):
        export_shards(ExportShardsConfig(store="unused", out=str(tmp_path / "out"), qa=["unused"], shard_mb=0.0))
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def required_values(cls) -> dict[str, str]:
    return {f.name: "x" for f in dataclasses.fields(cls) if f.default is REQUIRED and f.default_factory is REQUIRED}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_pass_and_every_number_has_a_rule(cls):
    validate(cls(**required_values(cls)))  # a rule must never reject the default
    hints = typing.get_type_hints(cls)
    unchecked = [f.name for f in dataclasses.fields(cls)
                 if hints[f.name] in (int, float) and f.metadata.get("check") is None]
    assert not unchecked


@pytest.mark.parametrize("cls, field, value", [
    (ExtractConfig, "actor_gpus", -0.5), (ExtractConfig, "actor_cpus", 0.0), (ExtractConfig, "precision", "fp16"),
    (ExtractConfig, "device", "gpu"), (TrainConfig, "beta2", 1.0), (TrainConfig, "stage", 3),
    (TrainConfig, "prompt_format", "alpaca"), (TrainConfig, "epochs", float("inf")), (DemoRunConfig, "clips", 8),
    (DemoConfig, "long_fraction", 1.5), (InitMertConfig, "size", "7b"), (ImportMuLlamaConfig, "query_len", 0),
    (IndexBuildConfig, "target_recall", 0.0), (IndexBuildConfig, "memory_gb", float("nan")), (IndexQueryConfig, "k", 0),
    (IndexEvalConfig, "recall_queries", -1), (ExtractConfig, "index", "a/b"), (EvalGenerateConfig, "top_p", 0.0),
    (EvalGenerateConfig, "top_p", 1.5), (EvalGenerateConfig, "temperature", float("nan")),
    (EvalGenerateConfig, "controls", "shuffled,noise"), (EvalGenerateConfig, "protocol", "windows"),
    (EvalGenerateConfig, "max_new_tokens", 0), (EvalGenerateConfig, "out", ""),
    (EvalScoreConfig, "bertscore_layer", -1),
    (EvalChoiceConfig, "controls", "knn"), (CaptionConfig, "partition_size", 0), (CaptionConfig, "protocol", "all"),
    (CaptionConfig, "ray_gpus_per_actor", 0.0), (AskConfig, "top_p", 2.0), (AskConfig, "seed", -2),
    (EvalChoiceConfig, "batch_size", 0), (InstallWordnetConfig, "source", " "), (ServeConfig, "port", 70000),
    (ServeConfig, "max_batch_size", 0), (ServeConfig, "max_body_mb", 0.0), (ServeConfig, "batch_wait_ms", -1.0),
    (ServeConfig, "host", ""), (QaGenerateConfig, "max_attempts", 0), (QaGenerateConfig, "llm", " "),
    (QaGenerateConfig, "limit", -1), (InitVisionConfig, "size", "large"), (QaSplitConfig, "eval_fraction", 1.0),
    (QaSplitConfig, "out", "")])
def test_out_of_range_values_name_their_option(cls, field, value):
    config = cls(**{**required_values(cls), field: value})
    with pytest.raises(MullamaError, match=f"^--{field.replace('_', '-')} "):
        validate(config)


@pytest.mark.parametrize("row", ["[1, 2]", '"x"', "3"])
def test_jsonl_rows_that_are_not_objects_name_file_and_line(tmp_path, row):
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"clip_id": "a", "path": "a.wav"}) + "\n" + row + "\n")
    with pytest.raises(MullamaError, match=r"clips\.jsonl: line 2 is a JSON \w+, not an object"):
        resolve_sources(manifest)


def test_musicqa_names_leaving_the_audio_root_are_failed_never_read(tmp_path):
    root = tmp_path / "audios"
    root.mkdir()
    names = ["ok.wav", "sub/../inside.wav", "../x.wav", "/etc/passwd", "sub/../../y.wav"]
    write_musicqa(tmp_path / "qa.json", [QAPair(name, "q", "a") for name in names])
    sources = {s.clip_id: s for s in resolve_sources(tmp_path / "qa.json", root)}
    assert sources["ok.wav"].problem == sources["sub/../inside.wav"].problem == ""
    assert sources["ok.wav"].path == str(root / "ok.wav")
    for name in ("../x.wav", "/etc/passwd", "sub/../../y.wav"):
        assert sources[name].problem == f"outside_root: audio_name {name} leaves --audio-root {root}"


def test_malformed_musicqa_turns_are_one_line_errors(tmp_path):
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"audio_name": "a.wav", "conversation": ["hi", "there"]}]))
    with pytest.raises(MullamaError, match="item 0: every conversation turn needs a 'value'"):
        resolve_sources(qa)
