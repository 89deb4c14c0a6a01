"""`mullama import-mu-llama` end to end, and the model commands' help."""

import json
import subprocess
import sys

import pytest
from mu_llama_reference import Shapes, random_state, save_released, write_hf_llama
from typer.testing import CliRunner

from mullama.cli import app


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("words", [["models", "init-llama"], ["import-mu-llama"]], ids=" ".join)
def test_model_commands_have_help(words):
    result = CliRunner().invoke(app, words + ["--help"], terminal_width=200)
    assert result.exit_code == 0 and "Usage" in result.output
    if words == ["import-mu-llama"]:
        assert all(flag in result.output for flag in ("--llama", "--out", "--mert", "--query-len", "--tolerance"))


def test_import_command_reports_and_sets_the_exit_code(tmp_path, tiny_llama):
    shapes = Shapes()
    state = random_state(shapes)
    checkpoint = save_released(tmp_path / "checkpoint.pth", state)
    llama = write_hf_llama(tmp_path / "llama", state, shapes, tiny_llama)
    ok = run_cli("import-mu-llama", str(checkpoint), "--llama", str(llama), "--out", str(tmp_path / "adapter"))
    assert ok.returncode == 0, ok.stderr
    assert "stage 2 (biases on, LoRA rank 4)" in ok.stdout and "last 2 of 4 layers adapted" in ok.stdout
    assert "ignored 2 MERT tensors" in ok.stdout and "frozen LLaMA weights match" in ok.stdout

    changed = dict(state, **{"llama.output.weight": state["llama.output.weight"] + 0.01})
    other = write_hf_llama(tmp_path / "other", changed, shapes, tiny_llama)
    bad = run_cli("import-mu-llama", str(checkpoint), "--llama", str(other), "--out", str(tmp_path / "a2"))
    assert bad.returncode == 1 and "DIFFERS: llama.output.weight" in bad.stdout

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    error = run_cli("import-mu-llama", str(junk), "--llama", str(llama), "--out", str(tmp_path / "a3"))
    assert error.returncode == 2 and error.stderr.startswith("error:") and len(error.stderr.strip().splitlines()) == 1


def test_import_pins_the_mert_folder_given(tmp_path, tiny_llama, tiny_mert):
    from mullama.extract.mert import MertEncoder

    shapes = Shapes(hidden_states=4, encoder_hidden=64)  # the tiny MERT's 4 x 64 stacks
    state = random_state(shapes, stage2=False)
    checkpoint = save_released(tmp_path / "checkpoint.pth", state)
    llama = write_hf_llama(tmp_path / "llama", state, shapes, tiny_llama)
    result = CliRunner().invoke(app, ["import-mu-llama", str(checkpoint), "--llama", str(llama), "--out",
                                      str(tmp_path / "adapter"), "--mert", str(tiny_mert)])
    assert result.exit_code == 0, result.output
    assert "stage 1, last 2 of 4 layers adapted, 4 x 64 stacks" in result.output
    manifest = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert manifest["encoder"] == MertEncoder.load(tiny_mert, device="cpu").identity.to_dict()
    assert manifest["prompt_format"] == "mu-llama" and manifest["source"]["epoch"] == 19
    assert manifest["source"]["args"]["max_words"] == 512 and manifest["source"]["imported_from"] == "checkpoint.pth"


def test_the_cli_and_the_model_package_import_without_torch():
    code = ("import sys, mullama.cli, mullama.model; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from mullama.model import MusicLlama; from mullama.model.music_llama import MusicLlama as M; "
            "assert MusicLlama is M")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
