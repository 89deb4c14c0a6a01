"""Bad input that must be one clear refusal (issue 27): multiple-choice files, seeds, unwritable --out folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mullama.config import build_config
from mullama.data.choice import MAX_OPTION_CHARS, MAX_QUESTION_CHARS, read_choice_items
from mullama.durable import check_writable_folder
from mullama.errors import MullamaError
from mullama.model.identity import LlmIdentity
from mullama.music.generator import WEIGHTS_FILE, GeneratorManifest, MusicGenerator
from mullama.music.head import OutputConfig
from mullama.music.space import ConditioningSpace
from mullama.serve.config import AskConfig, EditConfig, GenerateConfig
from mullama.serve.generate import run_generate

GOOD = {"audio_name": "a.wav", "question": "Which instrument?", "options": ["piano", "organ"], "answer": 0}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("change, cause", [
    ({"options": ["piano", "piano"]}, "option 1 repeats option 0"),
    ({"options": ["piano", " Piano "]}, "option 1 repeats option 0"),
    ({"question": ""}, "question must be a non-empty text"),
    ({"question": "   "}, "question must be a non-empty text"),
    ({"question": 7}, "question must be a non-empty text"),
    ({"answer": True}, "answer must be an integer"),
    ({"answer": 0.5}, "answer must be an integer"),
    ({"answer": "0"}, "answer must be an integer"),
    ({"options": [1, 2]}, "option 0 must be a non-empty text"),
    ({"options": ["piano", None]}, "option 1 must be a non-empty text"),
    ({"options": ["piano", ""]}, "option 1 must be a non-empty text"),
    ({"options": ["piano", "x" * 100_000]}, f"option 1 is 100000 characters long; at most {MAX_OPTION_CHARS}"),
    ({"question": "q" * (MAX_QUESTION_CHARS + 1)}, f"at most {MAX_QUESTION_CHARS}"),
])
def test_choice_items_are_refused_with_their_number_and_cause(tmp_path, change, cause):
    path = tmp_path / "choice.json"
    path.write_text(json.dumps([GOOD, {**GOOD, **change}]))
    with pytest.raises(MullamaError) as raised:
        read_choice_items(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: item 1 ") and cause in message and "\n" not in message


def test_choice_items_at_the_limits_are_read(tmp_path):
    path = tmp_path / "choice.json"
    longest = {**GOOD, "question": "q" * MAX_QUESTION_CHARS, "options": ["o" * MAX_OPTION_CHARS, "p"], "answer": 1}
    path.write_text(json.dumps([GOOD, longest]))
    items = read_choice_items(path)
    assert [i.answer for i in items] == [0, 1] and items[1].options[0] == "o" * MAX_OPTION_CHARS


def test_eval_choice_with_a_huge_option_is_one_line_before_any_model_loads(tmp_path):
    path = tmp_path / "choice.json"
    path.write_text(json.dumps([{**GOOD, "options": ["piano", "x" * 100_000]}]))
    result = run_cli("eval", "choice", "--store", str(tmp_path / "none"), "--adapter", str(tmp_path / "none"),
                     "--llama", str(tmp_path / "none"), "--questions", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "item 0 option 1 is 100000 characters long" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


BASE = {"request": "calm piano", "generator": "gen", "out": "out.wav"}


@pytest.mark.parametrize("cls, values", [
    (GenerateConfig, BASE),
    (EditConfig, {**BASE, "input": "in.wav", "mert": "mert"}),
    (AskConfig, {"question": "What?", "adapter": "a", "llama": "l"}),
])
@pytest.mark.parametrize("seed", [10 ** 20, 2 ** 32, -2])
def test_seeds_outside_the_generators_range_are_refused(cls, values, seed):
    with pytest.raises(MullamaError, match=rf"^--seed {seed}: must be in \[-1, 4294967296\)$"):
        build_config(cls, {**values, "seed": seed})
    build_config(cls, {**values, "seed": 2 ** 32 - 1})
    build_config(cls, {**values, "seed": -1})


def test_generate_with_a_20_digit_seed_is_one_error_line():
    result = run_cli("generate", "calm piano", "--generator", "nowhere", "--out", "x.wav",
                     "--seed", "99999999999999999999")
    assert result.returncode == 2 and result.stderr.startswith("error: --seed 99999999999999999999: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unwritable_out_folder_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(MullamaError, match=r"^--out /proc/out.wav: cannot write into folder /proc \("):
        run_generate(build_config(GenerateConfig, {**BASE, "generator": str(tmp_path / "no-generator"),
                                                   "out": "/proc/out.wav"}))
    check_writable_folder(tmp_path, "--out x")
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_a_missing_out_folder_keeps_its_message(tmp_path):
    with pytest.raises(MullamaError, match="does not exist"):
        check_writable_folder(tmp_path / "missing", "--out x")
    assert not Path(tmp_path / "missing").exists()


def test_serve_warns_about_an_index_folder_copied_from_another_store(tmp_path, tiny_llama):
    import shutil

    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from mullama.model import MusicLlama
    from mullama.serve.config import ServeConfig
    from mullama.serve.services.resources import load_resources
    from tests.helpers import synthetic_store

    first = synthetic_store(str(tmp_path / "first"), clips=20)
    synthetic_store(str(tmp_path / "second"), clips=20)
    build_index(build_config(IndexBuildConfig, {"store": str(tmp_path / "first"), "progress": False}))
    shutil.copytree(tmp_path / "first" / "indexes", tmp_path / "second" / "indexes")
    MusicLlama.create(tiny_llama, first.encoder, device="cpu", seed=0).save(tmp_path / "adapter")
    config = {"adapter": str(tmp_path / "adapter"), "llama": str(tiny_llama), "device": "cpu"}
    copied = load_resources(build_config(ServeConfig, {**config, "index": str(tmp_path / "second/indexes/default")}))
    assert [w for w in copied.warnings if "was built from another store" in w]
    own = load_resources(build_config(ServeConfig, {**config, "index": str(tmp_path / "first/indexes/default")}))
    assert own.warnings == []


def test_a_generator_folder_whose_weights_came_from_elsewhere_is_one_line(tmp_path):
    """Weights of another head (other keys and shapes): torch lists every mismatch on its own line; the error is
    one line."""
    manifest = GeneratorManifest(OutputConfig(d_model=8, width=8, length=4, layers=1, heads=2),
                                 LlmIdentity("llm", "c", "t", "w"), "adapter", ConditioningSpace(8, "c", "t", "w"),
                                 {}, {})
    save_file({"tokens": torch.zeros(3, 16), "elsewhere.weight": torch.zeros(2, 2)}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(MullamaError, match="is unreadable") as refused:
        MusicGenerator.on(None, tmp_path, manifest)
    assert "\n" not in str(refused.value)
