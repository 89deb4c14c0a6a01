import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mullama.cli import app

runner = CliRunner()
COMMANDS = [[], ["demo"], ["data"], ["data", "demo"], ["models"], ["models", "init-mert"], ["models", "init-llama"],
            ["extract"], ["store"], ["store", "info"], ["store", "verify"], ["store", "gc"],
            ["store", "export-shards"], ["train"], ["import-mu-llama"], ["index"], ["index", "build"],
            ["index", "query"], ["index", "eval"], ["eval"], ["eval", "generate"], ["eval", "score"],
            ["eval", "choice"], ["eval", "report"], ["eval", "install-wordnet"], ["ask"], ["caption"], ["serve"],
            ["qa"], ["qa", "generate"], ["qa", "split"], ["models", "init-vit"], ["models", "init-vivit"]]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "mullama")
def test_every_command_has_help(words):
    result = runner.invoke(app, words + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


def test_extract_help_lists_every_option():
    output = runner.invoke(app, ["extract", "--help"], terminal_width=200).output
    for flag in ("--mert", "--store", "--window-seconds", "--batch-size", "--device", "--workers", "--config",
                 "--retry-failed"):
        assert flag in output


def test_the_command_line_starts_without_the_heavy_libraries():
    """cli.py imports only config modules at its top, so `mullama --help` loads no torch, transformers, ray or
    diffusers (the README's Layout section has the measurement)."""
    code = ("import sys, mullama.cli; "
            "print(' '.join(m for m in ('torch', 'transformers', 'ray', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_user_mistakes_give_one_line_and_nonzero_exit(tmp_path):
    result = run_cli("store", "info", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    result = run_cli("extract", str(tmp_path), "--store", str(tmp_path / "s"))
    assert result.returncode == 2 and "--mert" in result.stderr


def test_yaml_config_with_command_line_override(tmp_path, tiny_mert, audio_folder):
    config = tmp_path / "extract.yaml"
    config.write_text(f"input: {audio_folder}\nmert: {tiny_mert}\nstore: {tmp_path / 'from-yaml'}\n"
                      "window_seconds: 1.0\nworkers: 0\nprogress: false\n")
    result = run_cli("extract", "--config", str(config), "--store", str(tmp_path / "from-cli"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-cli" / "commits").is_dir() and not (tmp_path / "from-yaml").exists()
    info = run_cli("store", "info", str(tmp_path / "from-cli"), "--json")
    assert '"clips": 8' in info.stdout and '"window_seconds": 1.0' in info.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: x\nwindow_secs: 3\n")
    result = run_cli("extract", "--config", str(bad))
    assert result.returncode == 2 and "window_secs" in result.stderr


def test_store_verify_exit_codes(tmp_path, tiny_mert, audio_folder):
    store = tmp_path / "s"
    assert run_cli("extract", str(audio_folder), "--mert", str(tiny_mert), "--store", str(store), "--workers", "0",
                   "--no-progress").returncode == 0
    ok = run_cli("store", "verify", str(store))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    shard = next((store / "partitions").glob("*/clip_stacks/c/0/0/0"))
    shard.write_bytes(shard.read_bytes()[:-10])
    broken = run_cli("store", "verify", str(store))
    assert broken.returncode == 1 and "CORRUPT" in broken.stdout and "clip_stacks" in broken.stdout
    commit = next((store / "commits").glob("*.json"))
    commit.write_text(commit.read_text()[:40])
    unreadable = run_cli("store", "verify", str(store))
    assert unreadable.returncode == 1 and f"commits/{commit.name}: unreadable commit record" in unreadable.stdout


def test_shipped_training_configs_load():
    from pathlib import Path

    from mullama.config import build_config, load_yaml
    from mullama.train.config import TrainConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    loaded = {path.stem: build_config(TrainConfig, load_yaml(path), str(path)) for path in configs}
    assert loaded["stage1-llama2-7b"].lr == pytest.approx(1e-4 * 4 / 256)
    assert loaded["stage2-llama2-7b"].batch_size * loaded["stage2-llama2-7b"].grad_accum == 32
    assert loaded["stage2-llama2-7b"].stage == 2 and loaded["stage2-llama2-7b"].init_adapter
