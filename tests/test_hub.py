"""Model arguments by Hub id (issue 30), without the internet: a local stand-in Hub (tests/hub_server.py) and
caches laid out by hand."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

from mullama.cli import main
from mullama.hub import fetch, resolve_model
from mullama.store import FeatureStore
from tests.helpers import write_tone
from tests.hub_server import running_hub
from tests.test_eval import setup as eval_setup  # noqa: F401 (a fixture: a store, an adapter and a MusicQA file)

MERT_ID = "m-a-p/MERT-tiny"


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_mert):
    """The stand-in Hub serving the tiny MERT as m-a-p/MERT-tiny, an empty cache, online."""
    with running_hub() as (stub, url):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        stub.serve(MERT_ID, tiny_mert)
        yield stub


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`mullama ARGS` in this process (so the monkeypatched environment holds): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["mullama", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_fetch_takes_configs_tokenizer_and_safetensors_only_never_code(hub, tmp_path, tiny_mert):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_mert, repo)
    (repo / "modeling_mert.py").write_text("raise SystemExit('remote code ran')\n")
    (repo / "pytorch_model.bin").write_bytes(b"pickled weights never fetched when safetensors exist")
    served = hub.serve("org/both-kinds", repo)
    source = fetch("org/both-kinds")
    names = {p.name for p in source.folder.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert "pytorch_model.bin" not in names and "modeling_mert.py" not in names
    assert (source.repo_id, source.commit) == ("org/both-kinds", served.commit)
    assert source.folder.parent.parent.name == "models--org--both-kinds"

    (repo / "model.safetensors").unlink()
    hub.serve("org/bin-only", repo)
    assert "pytorch_model.bin" in {p.name for p in fetch("org/bin-only").folder.iterdir()}


def test_extract_by_id_gives_the_store_the_folder_gives(hub, monkeypatch, capsys, tmp_path, tiny_mert):
    for number in range(2):
        write_tone(tmp_path / "audio" / f"c{number}.wav", 1.0, 24000, 200.0 * (number + 1), seed=number)
    stores = {}
    for label, mert in (("folder", str(tiny_mert)), ("id", MERT_ID)):
        stores[label] = tmp_path / f"store-{label}"
        code, _, err = run_cli(monkeypatch, capsys, "extract", str(tmp_path / "audio"), "--store",
                               str(stores[label]), "--mert", mert, "--workers", "0", "--no-progress")
        assert code == 0, err
    by_folder, by_id = (FeatureStore.open(str(stores[k])) for k in ("folder", "id"))
    assert by_folder.clip_ids() == by_id.clip_ids()
    assert by_folder.encoder.same_encoder(by_id.encoder)
    commit = hub.repos[MERT_ID].commit
    assert (by_folder.encoder.hub_id, by_id.encoder.hub_id, by_id.encoder.hub_commit) == ("", MERT_ID, commit)
    code, out, _ = run_cli(monkeypatch, capsys, "store", "info", str(stores["id"]))
    assert code == 0 and f"from {MERT_ID}@{commit[:12]}" in out
    np.testing.assert_array_equal(by_folder.get(by_folder.clip_ids()), by_id.get(by_folder.clip_ids()))

    go_offline(monkeypatch)  # the cache now answers alone
    before = len(hub.requests)
    code, out, _ = run_cli(monkeypatch, capsys, "models", "info", MERT_ID)
    assert code == 0 and MERT_ID in out and hub.repos[MERT_ID].commit in out and len(hub.requests) == before


def test_revision_in_the_id_and_unknown_ones(hub, monkeypatch, capsys):
    commit = hub.repos[MERT_ID].commit
    assert resolve_model(f"{MERT_ID}@{commit}").commit == commit
    code, _, err = run_cli(monkeypatch, capsys, "models", "fetch", MERT_ID, "--revision", "v9")
    assert_one_line_error(code, err, MERT_ID, "no such revision")
    code, _, err = run_cli(monkeypatch, capsys, "extract", "in", "--store", "s", "--mert", "nobody/nothing")
    assert_one_line_error(code, err, "--mert nobody/nothing", "no such model on the Hub")


def test_gated_repo_needs_a_token(hub, monkeypatch, capsys, tiny_mert):
    hub.serve("meta-llama/gated", tiny_mert, gated=True)
    code, _, err = run_cli(monkeypatch, capsys, "models", "fetch", "meta-llama/gated")
    assert_one_line_error(code, err, "meta-llama/gated", "gated", "HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert fetch("meta-llama/gated").commit == hub.repos["meta-llama/gated"].commit


def test_offline_and_not_cached(hub, monkeypatch, capsys, tmp_path):
    go_offline(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "index", "query", str(tmp_path / "store"), "--audio", "a.wav",
                           "--mert", MERT_ID)
    assert_one_line_error(code, err, f"--mert {MERT_ID}", "not in the Hugging Face cache", "HF_HUB_OFFLINE",
                          "models fetch")
    assert not hub.requests


def test_a_vit_given_as_mert_is_refused_naming_the_id(hub, monkeypatch, capsys, tmp_path):
    from mullama.fixtures.vision import write_random_encoder

    hub.serve("google/vit-tiny", write_random_encoder("vit", tmp_path / "vit"))
    write_tone(tmp_path / "audio" / "c.wav", 1.0, 24000, 220.0)
    code, _, err = run_cli(monkeypatch, capsys, "extract", str(tmp_path / "audio"), "--store", str(tmp_path / "s"),
                           "--mert", "google/vit-tiny", "--workers", "0", "--no-progress")
    assert_one_line_error(code, err, "google/vit-tiny")


def test_a_dropped_connection_is_retried_within_the_run(hub):
    size = (hub.repos[MERT_ID].folder / "model.safetensors").stat().st_size
    hub.breaks["model.safetensors"] = ["cut"]
    assert (fetch(MERT_ID).folder / "model.safetensors").stat().st_size == size
    assert sum(1 for r in hub.requests if r[0] == "GET" and r[1].endswith("/model.safetensors")) == 2


def test_an_interrupted_download_fails_in_one_line_and_the_next_run_finishes_it(hub, monkeypatch, capsys):
    hub.breaks["model.safetensors"] = ["cut", "fail"]
    code, _, err = run_cli(monkeypatch, capsys, "models", "fetch", MERT_ID, "--no-progress")
    assert_one_line_error(code, err, MERT_ID, "interrupted", "run the same command again")
    assert hub.breaks["model.safetensors"] == []  # both breaks met: huggingface_hub retried once by itself
    code, out, err = run_cli(monkeypatch, capsys, "models", "fetch", MERT_ID)
    assert code == 0 and hub.repos[MERT_ID].commit in out, err
    config_gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("/config.json")]
    assert len(config_gets) == 1  # the files the first run finished are kept


def test_offline_cache_laid_out_by_hand(monkeypatch, capsys, tmp_path, tiny_mert):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-home" / "hub" / "models--m-a-p--MERT-v1-330M"  # HF_HOME's cache, as huggingface_hub lays it
    shutil.copytree(tiny_mert, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    go_offline(monkeypatch)
    source = resolve_model("m-a-p/MERT-v1-330M")
    assert (source.folder, source.repo_id, source.commit) == (repo / "snapshots" / commit, "m-a-p/MERT-v1-330M",
                                                              commit)
    code, out, err = run_cli(monkeypatch, capsys, "models", "info", "m-a-p/MERT-v1-330M")
    assert code == 0 and commit in out, err
    code, _, err = run_cli(monkeypatch, capsys, "models", "info", "m-a-p/MERT-v1-330M@v2")
    assert_one_line_error(code, err, "m-a-p/MERT-v1-330M@v2", "not in the Hugging Face cache")


def test_import_by_ids_gives_the_adapter_the_folders_give_and_loads_by_id(hub, monkeypatch, capsys, tmp_path,
                                                                         tiny_llama):
    import torch
    from mu_llama_reference import Shapes, random_state, save_released, write_hf_llama
    from safetensors.torch import load_file

    from mullama.model.music_llama import MusicLlama

    state = random_state(Shapes(), stage2=True)
    (tmp_path / "released").mkdir()
    checkpoint = save_released(tmp_path / "released" / "checkpoint.pth", state)
    llama = write_hf_llama(tmp_path / "llama", state, Shapes(), tiny_llama)
    hub.serve("mu-llama/MU-LLaMA", checkpoint.parent)
    hub.serve("meta-llama/Llama-2-7b-hf", llama)
    runs = {"folders": (str(checkpoint), str(llama)),
            "ids": ("mu-llama/MU-LLaMA:checkpoint.pth", "meta-llama/Llama-2-7b-hf")}
    for label, (released, base) in runs.items():
        code, _, err = run_cli(monkeypatch, capsys, "import-mu-llama", released, "--llama", base, "--out",
                               str(tmp_path / label))
        assert code == 0, err
    by_folder, by_id = (load_file(tmp_path / label / "adapter.safetensors") for label in runs)
    assert by_folder.keys() == by_id.keys() and all(torch.equal(by_folder[k], by_id[k]) for k in by_folder)

    manifests = [json.loads((tmp_path / label / "adapter.json").read_text())["llm"] for label in runs]
    assert manifests[0]["hub_id"] == "" and manifests[1]["hub_id"] == "meta-llama/Llama-2-7b-hf"
    assert manifests[1]["hub_commit"] == hub.repos["meta-llama/Llama-2-7b-hf"].commit

    go_offline(monkeypatch)
    model = MusicLlama.load(tmp_path / "ids", "meta-llama/Llama-2-7b-hf", dtype="fp32", device="cpu")
    reference = MusicLlama.load(tmp_path / "folders", llama, dtype="fp32", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.model.state_dict().values(),
                                                 reference.model.state_dict().values()))
    code, _, err = run_cli(monkeypatch, capsys, "import-mu-llama", "mu-llama/MU-LLaMA:missing.pth", "--llama",
                           str(llama), "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "mu-llama/MU-LLaMA:missing.pth")


@pytest.mark.parametrize("args, flag", [
    (["eval", "score", "answers.jsonl", "--bertscore-model", "FacebookAI/roberta-large"], "--bertscore-model"),
    (["qa", "generate", "captions.csv", "--out", "qa", "--llm", "meta-llama/Llama-2-7b-chat-hf"], "--llm"),
    (["caption", "--store", "s", "--adapter", "a", "--llama", "meta-llama/Llama-2-7b-hf", "--out", "c.jsonl"],
     "--llama"),
    (["train", "--shards", "sh", "--llama", "meta-llama/Llama-2-7b-hf", "--out", "run"], "--llama"),
    (["generate", "a calm piano piece", "--generator", "g", "--out", "o.wav", "--musicgen",
      "facebook/musicgen-small@v1"],
     "--musicgen"),
    (["extract", "in", "--store", "s", "--vivit", "google/vivit-b-16x2-kinetics400"], "--vivit"),
])
def test_every_model_argument_takes_an_id(monkeypatch, capsys, tmp_path, args, flag):
    """Offline with an empty cache, each command reaches the resolver: one line naming the option and the id."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    go_offline(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, f"{flag} {args[args.index(flag) + 1]}", "not in the Hugging Face cache")


def test_only_ids_that_are_no_path_are_resolved(tmp_path, monkeypatch):
    from mullama.data.qagen.config import QaGenerateConfig
    from mullama.hub_ids import hub_ids

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "llama").mkdir(parents=True)
    for llm in ("template", "http://127.0.0.1:8000/v1", "models/llama", "roberta-large"):
        assert hub_ids(QaGenerateConfig(source="s", out="o", llm=llm)) == {}
    assert hub_ids(QaGenerateConfig(source="s", out="o", llm="org/name@v2")) == {"llm": "org/name@v2"}


def test_fetch_to_a_folder_for_an_air_gapped_machine(hub, monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "models", "fetch", MERT_ID, "--to", str(tmp_path / "mert"),
                             "--no-progress")
    assert code == 0 and str(tmp_path / "mert") in out, err
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= {p.name for p in
                                                                                (tmp_path / "mert").iterdir()}
    go_offline(monkeypatch)
    code, out, err = run_cli(monkeypatch, capsys, "models", "info", str(tmp_path / "mert"))
    assert code == 0 and "(a local folder)" in out and hub.repos[MERT_ID].commit in out, err


def test_eval_generate_and_score_by_id_equal_the_folders(hub, monkeypatch, capsys, tmp_path, eval_setup):
    """Steps 5 and 6 of docs/real-weights.md on the stand-ins: answers and scores by id are those by folder."""
    from tests.test_eval import minilm

    root, _, adapter, llama = eval_setup
    hub.serve("meta-llama/Llama-2-7b-hf", llama)
    hub.serve("sentence-transformers/all-MiniLM-L6-v2", Path(minilm()))
    runs = {"folders": (str(llama), minilm()),
            "ids": ("meta-llama/Llama-2-7b-hf", "sentence-transformers/all-MiniLM-L6-v2")}
    for label, (base, bert) in runs.items():
        out = tmp_path / label
        code, _, err = run_cli(monkeypatch, capsys, "eval", "generate", "--store", str(root / "store"), "--adapter",
                               str(adapter), "--llama", base, "--qa", str(root / "qa.json"), "--train-qa",
                               str(root / "train.json"), "--out", str(out / "answers.jsonl"), "--max-new-tokens",
                               "4", "--device", "cpu", "--no-progress")
        assert code in (0, 1), err  # 1: the eval file names a clip the store lacks, on purpose
        code, _, err = run_cli(monkeypatch, capsys, "eval", "score", str(out / "answers.jsonl"), "--bertscore-model",
                               bert, "--out", str(out), "--cache-dir", str(tmp_path / f"cache-{label}"),
                               "--no-progress")
        assert code == 0, err
    answers = [(tmp_path / label / "answers.jsonl").read_text().splitlines() for label in runs]
    assert sorted(answers[0]) == sorted(answers[1])
    scores = [json.loads((tmp_path / label / "scores.json").read_text()) for label in runs]
    assert scores[0]["conditions"] == scores[1]["conditions"]
