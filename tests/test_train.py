"""Training from shards: loss, exact resume, trainable sets, no graph before the adapted layers, DDP, Ray Train."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.extract.config import ExtractConfig
from mullama.extract.runner import run_local
from mullama.model import MusicLlama
from mullama.store import FeatureStore
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.store.shards import ShardSet
from mullama.train.config import TrainConfig
from mullama.train.data import BatchSpec, EpochStream, padding_fraction
from mullama.train.trainer import run_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_mert):
    from tests.helpers import write_tone

    root = tmp_path_factory.mktemp("train")
    for number in range(12):
        write_tone(root / "audio" / f"c{number:02d}.wav", 1.0 + 0.1 * number, 24000, 100.0 + 40 * number, seed=number)
    run_local(ExtractConfig(input=str(root / "audio"), mert=str(tiny_mert), store=str(root / "store"), workers=0,
                            progress=False))
    store = FeatureStore.open(str(root / "store"))
    pairs = []
    for number, clip_id in enumerate(store.clip_ids()):
        pairs.append(QAPair(clip_id, "What is the pitch?", f"The pitch is {'low' if number < 6 else 'high'}."))
        pairs.append(QAPair(clip_id, "Describe the audio in detail",
                            "A steady tone with a few harmonics and a little noise, " * (1 + number % 4)))
    write_musicqa(root / "qa.json", pairs)
    export_shards(ExportShardsConfig(store=str(root / "store"), out=str(root / "shards"), qa=[str(root / "qa.json")],
                                     shard_mb=0.004, progress=False))
    return root / "shards"


def config(shards, llama, out, **overrides) -> TrainConfig:
    values = dict(shards=str(shards), llama=str(llama), out=str(out), max_steps=8, batch_size=4, lr=1e-2,
                  workers=0, progress=False, log_every=1, save_every=4, max_length=64)
    values.update(overrides)
    return TrainConfig(**values)


def logged_losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_loss_decreases_and_only_the_trained_part_is_saved(shards, tiny_llama, tmp_path):
    result = run_training(config(shards, tiny_llama, tmp_path / "run", max_steps=60, save_every=1000))
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < first - 0.05, (first, last)
    saved = {p.name for p in (tmp_path / "run" / "adapter").iterdir()}
    assert saved == {"adapter.json", "adapter.safetensors"}
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000060"]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_the_uninterrupted_run(shards, tiny_llama, tmp_path, workers):
    straight = run_training(config(shards, tiny_llama, tmp_path / "straight", workers=workers))
    first = run_training(config(shards, tiny_llama, tmp_path / "split", workers=workers, stop_after=4))
    assert first.adapter is None and first.steps == 4
    second = run_training(config(shards, tiny_llama, tmp_path / "split", workers=workers, resume=True))
    assert second.steps == 8
    assert second.losses == straight.losses[4:]  # bit-identical: same data, parameters, moments and schedule
    assert logged_losses(tmp_path / "split") == logged_losses(tmp_path / "straight")
    resumed, reference = (MusicLlama.load(p / "adapter", tiny_llama, device="cpu")
                          for p in (tmp_path / "split", tmp_path / "straight"))
    for (name, a), (_, b) in zip(resumed.model.music_adapter.state_dict().items(),
                                 reference.model.music_adapter.state_dict().items()):
        assert torch.equal(a, b), name


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(shards, tiny_llama, tmp_path):
    from mullama.errors import MullamaError
    from mullama.train.ray_launcher import train_with_ray

    run_training(config(shards, tiny_llama, tmp_path / "run", max_steps=2))
    with pytest.raises(MullamaError, match="--resume"):
        run_training(config(shards, tiny_llama, tmp_path / "run", max_steps=2))
    with pytest.raises(MullamaError, match="--resume"):  # found on the Ray driver, before any worker starts
        train_with_ray(config(shards, tiny_llama, tmp_path / "run", max_steps=2, ray="local"))
    with pytest.raises(MullamaError, match="no checkpoint"):
        run_training(config(shards, tiny_llama, tmp_path / "empty", resume=True))


def test_resume_after_a_crash_logs_each_step_once(shards, tiny_llama, tmp_path):
    straight = run_training(config(shards, tiny_llama, tmp_path / "straight"))
    run_training(config(shards, tiny_llama, tmp_path / "crash", stop_after=6))
    shutil.rmtree(tmp_path / "crash" / "checkpoints" / "step-00000006")  # the crash came before this save
    resumed = run_training(config(shards, tiny_llama, tmp_path / "crash", resume=True))
    assert resumed.losses == straight.losses[4:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "crash" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)) and logged_losses(tmp_path / "crash") == logged_losses(tmp_path / "straight")


def test_checkpoints_name_optimizer_state_by_parameter_and_resume_checks_settings(shards, tiny_llama, tmp_path):
    from safetensors.torch import load_file

    from mullama.errors import MullamaError

    run_training(config(shards, tiny_llama, tmp_path / "run", stop_after=4))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000004"
    trained = load_file(str(checkpoint / "trainable.safetensors"))
    moments = load_file(str(checkpoint / "optimizer.safetensors"))
    decayed, undecayed = json.loads((checkpoint / "state.json").read_text())["param_groups"]
    assert decayed["weight_decay"] > 0 and undecayed["weight_decay"] == 0
    assert all(trained[n].ndim >= 2 and not n.endswith(".bias") for n in decayed["params"])
    assert any(trained[n].ndim == 1 for n in undecayed["params"])
    assert all(moments[f"{n}::exp_avg"].shape == trained[n].shape for n in trained)
    with pytest.raises(MullamaError, match="batch_size 4 -> 2"):
        run_training(config(shards, tiny_llama, tmp_path / "run", batch_size=2, resume=True))
    (checkpoint / "trainable.safetensors").write_bytes(b"")
    with pytest.raises(MullamaError, match="unreadable"):
        run_training(config(shards, tiny_llama, tmp_path / "run", resume=True))


def test_training_data_that_gives_nothing_is_an_error_not_a_hang(shards, tiny_llama, tmp_path):
    from mullama.errors import MullamaError

    with pytest.raises(MullamaError, match="no training batch"):
        run_training(config(shards, tiny_llama, tmp_path / "short", max_length=4))
    empty = tmp_path / "empty"
    shutil.copytree(shards, empty)
    manifest = json.loads((empty / "shards.json").read_text())
    manifest["totals"]["pairs"] = 0
    (empty / "shards.json").write_text(json.dumps(manifest))
    with pytest.raises(MullamaError, match="no QA pair"):
        ShardSet.open(empty)


class PickleBomb:
    """Unpickling this touches a file: proof that a shard member was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_shard_members_are_never_unpickled(shards, tiny_llama, tmp_path):
    import pickle
    import tarfile
    from io import BytesIO

    from transformers import AutoTokenizer

    handed_over = tmp_path / "shards"
    shutil.copytree(shards, handed_over)
    marker = tmp_path / "unpickled"
    first = sorted(handed_over.glob("shard-*.tar"))[0]
    with tarfile.open(first) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    payload = pickle.dumps(PickleBomb(marker))
    key = members[0][0].name.split(".")[0]
    bombs = [(tarfile.TarInfo(f"{key}.{suffix}"), payload) for suffix in ("pyd", "pickle", "pth")]
    with tarfile.open(first, "w") as tar:  # the bombs sit beside the first sample's own members
        for member, data in members[:1] + bombs + members[1:]:
            member.size = len(data)
            tar.addfile(member, BytesIO(data))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    batches = list(EpochStream(ShardSet.open(handed_over), tokenizer, BatchSpec(4, 64, "clean"), 0, 0))
    assert batches and not marker.exists()


def frozen_llama_state(model: MusicLlama) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if not n.startswith("music_adapter.")}


def test_stage_1_changes_the_adapter_only_and_stage_2_the_spec_set_only(shards, tiny_llama, tmp_path):
    run_training(config(shards, tiny_llama, tmp_path / "s1", max_steps=3))
    stage1 = MusicLlama.load(tmp_path / "s1" / "adapter", tiny_llama, device="cpu")
    pristine = MusicLlama.create(tiny_llama, stage1.manifest.encoder, device="cpu")
    before = frozen_llama_state(pristine)
    assert all(torch.equal(before[n], p) for n, p in frozen_llama_state(stage1).items())
    assert not torch.equal(stage1.model.music_adapter.gates, pristine.model.music_adapter.gates)

    run_training(config(shards, tiny_llama, tmp_path / "s2", stage=2, init_adapter=str(tmp_path / "s1" / "adapter"),
                        max_steps=3))
    stage2 = MusicLlama.load(tmp_path / "s2" / "adapter", tiny_llama, device="cpu")
    for (name, a), (_, b) in zip(stage1.model.music_adapter.state_dict().items(),
                                 stage2.model.music_adapter.state_dict().items()):
        assert torch.equal(a, b), f"stage 2 changed the adapter ({name})"
    changed = {n for n, p in stage2.model.named_parameters()
               if n in before and not torch.equal(before[n], p)}
    assert changed and all("norm" in n for n in changed), changed  # frozen base weights never move
    lora = [n for n, p in stage2.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    biases = [n for n, p in stage2.model.named_parameters() if n.endswith("q_proj.base_layer.bias") and p.abs().sum() > 0]
    assert lora and biases
    with pytest.raises(Exception, match="init-adapter"):
        run_training(config(shards, tiny_llama, tmp_path / "s2b", stage=2))


def test_layers_before_the_adapted_ones_build_no_graph_in_stage_1(shards, tiny_llama):
    from mullama.model.stage2 import set_trainable

    model = MusicLlama.create(tiny_llama, ShardSet.open(shards).encoder, device="cpu", adapted_layers=2)
    set_trainable(model.model, 1)
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (o[0] if isinstance(o, tuple)
                                                                                  else o).requires_grad))
             for n, layer in enumerate(model.model.model.layers)]
    batch = next(iter(EpochStream(ShardSet.open(shards), model.tokenizer, BatchSpec(4, 64, "clean"), 0, 0)))
    output = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         music_prompt=model.model.music_prompt(batch["stacks"]), use_cache=False)
    for hook in hooks:
        hook.remove()
    assert output.loss.requires_grad
    first = model.config.first_adapted_layer
    assert first == 2 and [seen[n] for n in range(4)] == [False, False, True, True]


def test_bucketing_cuts_padding(shards, tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    shard_set = ShardSet.open(shards)
    random_batches = EpochStream(shard_set, tokenizer, BatchSpec(4, 512, "clean", bucket=False), 0, 0)
    bucketed = EpochStream(shard_set, tokenizer, BatchSpec(4, 512, "clean", bucket=True), 0, 0)
    before, after = padding_fraction(random_batches), padding_fraction(bucketed)
    assert after < before / 2, (before, after)
    assert sum(len(b["input_ids"]) for b in EpochStream(shard_set, tokenizer, BatchSpec(4, 512, "clean"), 0, 0)) == 24


@pytest.mark.timeout(300)
def test_torchrun_ddp_on_two_cpu_ranks(shards, tiny_llama, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mullama.cli", "train", "--shards", str(shards), "--llama", str(tiny_llama), "--out", str(out),
               "--max-steps", "4", "--batch-size", "2", "--workers", "0", "--no-progress", "--log-every", "1",
               "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(logged_losses(out)) == 4 and (out / "adapter" / "adapter.safetensors").is_file()


@pytest.mark.timeout(300)
def test_ray_train_launcher(shards, tiny_llama, tmp_path):
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "mullama.cli", "train", "--shards", str(shards), "--llama", str(tiny_llama),
               "--out", str(out), "--max-steps", "3", "--batch-size", "2", "--workers", "0", "--ray", "local",
               "--ray-workers", "2", "--log-every", "1", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(logged_losses(out)) == 3 and (out / "adapter" / "adapter.safetensors").is_file()


def test_cli_takes_the_run_config_as_its_argument(shards, tiny_llama, tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"shards: {shards}\nllama: {tiny_llama}\nout: {tmp_path / 'from-yaml'}\nmax_steps: 2\n"
                        "batch_size: 2\nworkers: 0\nlog_every: 1\n")
    command = [sys.executable, "-m", "mullama.cli", "train", str(run_file), "--out", str(tmp_path / "cli"),
               "--no-progress"]
    completed = subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                               timeout=240)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "loss" in completed.stdout and len(logged_losses(tmp_path / "cli")) == 2
    assert not (tmp_path / "from-yaml").exists()
