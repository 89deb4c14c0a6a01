"""Resume refuses re-exported shards; a run killed before its first checkpoint can be started again."""

import fcntl
import json

import pytest

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.train.config import TrainConfig
from mullama.train.trainer import run_training


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_mert):
    """A store of six clips and two QA files about them that teach different answers."""
    from tests.helpers import tone_store

    root = tmp_path_factory.mktemp("train-safety")
    ids = tone_store(root, tiny_mert, 6)
    write_musicqa(root / "qa-a.json", [QAPair(c, "Is it high?", "Yes." if n > 2 else "No.") for n, c in enumerate(ids)])
    write_musicqa(root / "qa-b.json", [QAPair(c, "Describe it.", "A steady tone.") for c in ids])
    return root


def export(store, qa, out, overwrite=False):
    export_shards(ExportShardsConfig(store=str(store / "store"), out=str(out), qa=[str(store / qa)], progress=False,
                                     overwrite=overwrite))


def config(shards, llama, out, **overrides) -> TrainConfig:
    values = dict(shards=str(shards), llama=str(llama), out=str(out), max_steps=4, batch_size=2, lr=1e-2, workers=0,
                  progress=False, log_every=1, save_every=2, max_length=48, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def logged_steps(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_resume_refuses_shards_exported_again_with_other_data(store, tiny_llama, tmp_path):
    export(store, "qa-a.json", tmp_path / "shards")
    run_training(config(tmp_path / "shards", tiny_llama, tmp_path / "run", stop_after=2))
    export(store, "qa-b.json", tmp_path / "shards", overwrite=True)
    with pytest.raises(MullamaError, match="the shards in .* changed since checkpoint step-00000002"):
        run_training(config(tmp_path / "shards", tiny_llama, tmp_path / "run", resume=True))
    export(store, "qa-a.json", tmp_path / "shards", overwrite=True)  # the data it trained on, byte for byte
    assert run_training(config(tmp_path / "shards", tiny_llama, tmp_path / "run", resume=True)).steps == 4


def test_a_checkpoint_from_before_fingerprints_resumes_and_a_torn_log_line_is_dropped(store, tiny_llama, tmp_path):
    export(store, "qa-a.json", tmp_path / "shards")
    run_training(config(tmp_path / "shards", tiny_llama, tmp_path / "run", stop_after=2))
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "state.json"
    saved = json.loads(state.read_text())
    del saved["config"]["shards_fingerprint"]
    state.write_text(json.dumps(saved))
    with open(tmp_path / "run" / "log.jsonl", "a") as log:
        log.write('{"step": 3, "lo')  # kill -9 in the middle of a log write
    assert run_training(config(tmp_path / "shards", tiny_llama, tmp_path / "run", resume=True)).steps == 4
    assert logged_steps(tmp_path / "run") == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_checkpoint_starts_again(store, tiny_llama, tmp_path, capsys):
    export(store, "qa-a.json", tmp_path / "shards")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # the killed run's only trace
    with pytest.raises(MullamaError, match="no checkpoint .*; start without --resume"):
        run_training(config(tmp_path / "shards", tiny_llama, out, resume=True))
    result = run_training(config(tmp_path / "shards", tiny_llama, out))
    assert result.steps == 4 and result.adapter is not None
    assert logged_steps(out) == [1, 2, 3, 4] and 9.0 not in [json.loads(x)["loss"] for x in
                                                               (out / "log.jsonl").read_text().splitlines()]
    assert "nothing to resume; starting afresh" in capsys.readouterr().err


@pytest.mark.parametrize("left", ["checkpoints/step-00000002", "adapter"])
def test_a_folder_with_a_checkpoint_or_an_adapter_still_needs_resume(store, tiny_llama, tmp_path, left):
    export(store, "qa-a.json", tmp_path / "shards")
    out = tmp_path / "run"
    (out / left).mkdir(parents=True)
    (out / "log.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    with pytest.raises(MullamaError, match="already holds a run; use --resume"):
        run_training(config(tmp_path / "shards", tiny_llama, out))
    assert (out / "log.jsonl").read_text() == '{"step": 2, "loss": 1.0}\n'


def test_a_live_run_keeps_its_folder(store, tiny_llama, tmp_path):
    export(store, "qa-a.json", tmp_path / "shards")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')  # a run still before its first checkpoint
    with open(out / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as its training process holds it
        with pytest.raises(MullamaError, match="in use by another training process"):
            run_training(config(tmp_path / "shards", tiny_llama, out))
    assert (out / "log.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'
