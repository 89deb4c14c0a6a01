"""MuMu-LLaMA's layout on the frozen LLaMA: a branch and a block of adapted layers per modality, trained from
the shards of each modality's store, asked with `mullama ask --image/--video`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.config import ExtractConfig
from mullama.extract.runner import run_local
from mullama.fixtures.vision import write_random_encoder
from mullama.model import MusicLlama
from mullama.model.adapter import MusicAdapter
from mullama.store import FeatureStore
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.train.config import TrainConfig
from mullama.train.trainer import run_training
from tests.helpers import write_image, write_tone


def identity(modality: str, kind: str, tokens: int, width: int) -> EncoderIdentity:
    return EncoderIdentity(name=kind, config_hash=f"{kind}-config", weights_hash=f"{kind}-weights", sample_rate=0,
                           hidden_states=tokens, hidden_size=width, modality=modality, kind=kind)


ENCODERS = {"audio": identity("audio", "mert", 5, 24), "image": identity("image", "vit", 7, 16),
            "video": identity("video", "vivit", 9, 16)}


def randomize(model: MusicLlama, seed: int = 1) -> None:
    """Non-zero gates and prefixes everywhere, so every block changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.model.music_adapter.named_parameters():
            if name.endswith(("gates", "prefix.weight")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def layer_outputs(model: MusicLlama, stacks: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """The hidden state after each decoder layer for one prompt."""
    captured: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: captured.append(
        (out[0] if isinstance(out, tuple) else out).detach().clone())) for layer in model.model.model.layers]
    try:
        model.logits(torch.tensor([[1, 50, 60, 70, 80]]), stacks)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_each_modality_adapts_its_own_block_of_layers(tiny_llama):
    model = MusicLlama.create(tiny_llama, ENCODERS, device="cpu")
    config = model.config
    assert [b.modality for b in config.branches] == ["audio", "image", "video"]
    assert (config.adapted_layers, config.first_adapted_layer, config.bridge_expansion) == (1, 1, 1)
    rng = np.random.default_rng(0)
    item = {m: rng.standard_normal((e.hidden_states, e.hidden_size)).astype(np.float32)[None]
            for m, e in ENCODERS.items()}
    bare = model.logits(torch.tensor([[1, 50, 60]]), {"image": item["image"]})
    randomize(model)
    assert model.model.music_prompt({m: torch.from_numpy(s) for m, s in item.items()}).shape == (1, 3, 1, 64)
    # zero gates would leave LLaMA untouched; with gates, the first differing layer is the modality's own block
    assert not torch.allclose(bare, model.logits(torch.tensor([[1, 50, 60]]), {"image": item["image"]}))
    for modality, block in (("audio", 1), ("image", 2), ("video", 3)):
        changed = dict(item, **{modality: item[modality] * -3.0})
        before, after = layer_outputs(model, item), layer_outputs(model, changed)
        differs = [not torch.equal(a, b) for a, b in zip(before, after)]
        assert differs.index(True) == block, (modality, differs)
    # an absent modality still sends its block's prefix: leaving audio out changes only layers from its block on
    without_audio = layer_outputs(model, {m: s for m, s in item.items() if m != "audio"})
    assert torch.equal(without_audio[0], layer_outputs(model, item)[0])
    with pytest.raises(MullamaError, match="no speech branch|takes audio, image, video"):
        model.logits(torch.tensor([[1, 50]]), {"speech": item["audio"]})


def test_the_last_branch_alone_is_a_single_adapter_on_the_last_layers(tiny_llama):
    """Audio gates at zero: the model must equal a one-branch adapter built from the image branch's weights."""
    encoders = {"audio": ENCODERS["audio"], "image": ENCODERS["image"]}
    model = MusicLlama.create(tiny_llama, encoders, adapted_layers=2, device="cpu")
    randomize(model)
    branches = model.model.music_adapter.branches
    with torch.no_grad():
        branches["audio"].gates.zero_()
    single = MusicLlama.create(tiny_llama, ENCODERS["image"], adapted_layers=2, device="cpu")
    image_config = dataclasses.replace(single.config, bridge_expansion=1)
    single.model.music_adapter = MusicAdapter(image_config)
    single.model.music_adapter.load_state_dict(branches["image"].state_dict())
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((2, 5, 24)).astype(np.float32)
    image = rng.standard_normal((2, 7, 16)).astype(np.float32)
    tokens = torch.tensor([[1, 50, 60, 70], [1, 80, 90, 100]])
    torch.testing.assert_close(model.logits(tokens, {"audio": audio, "image": image}), single.logits(tokens, image))
    assert model.answer({"audio": audio[0], "image": image[0]}, "Describe it", temperature=0, max_new_tokens=6) \
        == single.answer(image[0], "Describe it", temperature=0, max_new_tokens=6)


def test_save_and_load_keep_the_branches_and_check_each_encoder(tiny_llama, tmp_path):
    model = MusicLlama.create(tiny_llama, ENCODERS, device="cpu")
    randomize(model)
    model.save(tmp_path / "adapter")
    loaded = MusicLlama.load(tmp_path / "adapter", tiny_llama, device="cpu", encoder={"image": ENCODERS["image"]})
    assert loaded.modalities == ("audio", "image", "video")
    assert loaded.manifest.encoder_for("video") == ENCODERS["video"]
    stacks = {"video": np.ones((9, 16), np.float32)}
    assert loaded.answer(stacks, "Q", temperature=0, max_new_tokens=5) == \
        model.answer(stacks, "Q", temperature=0, max_new_tokens=5)
    other = dataclasses.replace(ENCODERS["image"], hidden_states=8)
    with pytest.raises(MullamaError, match="expects 7 x 16"):
        MusicLlama.load(tmp_path / "adapter", tiny_llama, device="cpu", encoder={"image": other})


@pytest.fixture(scope="module")
def modality_shards(tmp_path_factory, tiny_mert) -> dict[str, Path]:
    """Audio and image stores of the same 8 items, each exported with its own QA pairs."""
    root = tmp_path_factory.mktemp("multimodal")
    vit = write_random_encoder("vit", root / "vit", "tiny", seed=5)
    for number in range(8):
        write_tone(root / "audio" / f"a{number}.wav", 1.0 + 0.1 * number, 24000, 100.0 + 50 * number, seed=number)
        write_image(root / "images" / f"i{number}.png", number, (32, 32))
    run_local(ExtractConfig(input=str(root / "audio"), mert=str(tiny_mert), store=str(root / "audio-store"),
                            workers=0, progress=False))
    run_local(ExtractConfig(input=str(root / "images"), vit=str(vit), store=str(root / "image-store"), workers=0,
                            progress=False))
    shards = {}
    for modality, prefix in (("audio", "a"), ("image", "i")):
        store = f"{modality}-store"
        ids = FeatureStore.open(str(root / store)).clip_ids()
        write_musicqa(root / f"{modality}.json", [
            QAPair(clip_id, f"What is in this {modality}?", f"A {modality} of kind {'one' if n < 4 else 'two'}.")
            for n, clip_id in enumerate(ids)])
        export_shards(ExportShardsConfig(store=str(root / store), out=str(root / f"{modality}-shards"),
                                         qa=[str(root / f"{modality}.json")], shard_mb=0.002, progress=False))
        shards[modality] = root / f"{modality}-shards"
    shards["vit"] = vit
    shards["images"] = root / "images"
    return shards


def train_config(shards: dict[str, Path], llama: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(shards=str(shards["audio"]), extra_shards=[str(shards["image"])], llama=str(llama), out=str(out),
                  max_steps=6, batch_size=2, lr=1e-2, workers=0, progress=False, log_every=1, save_every=3,
                  max_length=48)
    values.update(overrides)
    return TrainConfig(**values)


def test_training_from_each_modality_store_resumes_exactly(modality_shards, tiny_llama, tmp_path):
    straight = run_training(train_config(modality_shards, tiny_llama, tmp_path / "straight"))
    model = MusicLlama.load(straight.adapter, tiny_llama, device="cpu")
    assert model.modalities == ("audio", "image")
    fresh = MusicLlama.create(tiny_llama, {"audio": model.manifest.encoders["audio"],
                                           "image": model.manifest.encoders["image"]}, device="cpu")
    for modality in ("audio", "image"):  # both branches were trained (their batches reached them)
        trained = model.model.music_adapter.branches[modality].projection.weight
        assert not torch.equal(trained, fresh.model.music_adapter.branches[modality].projection.weight), modality
    first = run_training(train_config(modality_shards, tiny_llama, tmp_path / "split", stop_after=3))
    assert first.adapter is None
    second = run_training(train_config(modality_shards, tiny_llama, tmp_path / "split", resume=True))
    assert second.losses == straight.losses[3:]
    with pytest.raises(MullamaError, match="both hold audio stacks"):
        run_training(train_config(modality_shards, tiny_llama, tmp_path / "twice",
                                  extra_shards=[str(modality_shards["audio"])]))


def test_ask_about_an_image_on_the_command_line(modality_shards, tiny_llama, tmp_path):
    run = run_training(train_config(modality_shards, tiny_llama, tmp_path / "run", max_steps=2))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    image = modality_shards["images"] / "i3.png"
    base = [sys.executable, "-m", "mullama.cli", "ask", "What is in this image?", "--adapter", str(run.adapter),
            "--llama", str(tiny_llama), "--temperature", "0", "--max-new-tokens", "6"]
    result = subprocess.run(base + ["--image", str(image), "--vit", str(modality_shards["vit"])],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    model = MusicLlama.load(run.adapter, tiny_llama, device="cpu")
    stored = FeatureStore.open(str(modality_shards["image"].parent / "image-store")).get(["i3.png"])[0]
    expected = model.answer({"image": stored.astype(np.float32)}, "What is in this image?", temperature=0,
                            max_new_tokens=6)
    assert result.stdout.strip() == expected  # the file goes through extraction's own path
    for extra, message in ((["--image", str(image)], "--image needs --vit"),
                           (["--video", str(image), "--vivit", str(modality_shards["vit"])], "no video branch"),
                           ([], "give what to ask about")):
        failed = subprocess.run(base + extra, capture_output=True, text=True, env=env, timeout=180)
        assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr, failed.stderr


def test_vision_demo_steps_run_resume_and_report_both_views(tiny_llama, tmp_path):
    """`mullama demo --vision` on a small corpus of the demo's layout, with a few steps: the views, their stores
    and shards, both training stages, and the looking test of each view. (Whether the model really reads the
    views is a matter of training length: the full demo's numbers are in BENCHMARKS.md, "Images and videos".)"""
    import csv

    from mullama.fixtures.vision_demo import run_vision_steps

    corpus = tmp_path / "corpus"
    rows, pairs = [], []
    for number in range(6):
        instrument = ("low drone", "high whistle")[number % 2]
        path = corpus / "audio" / f"c{number}.wav"
        write_tone(path, 2.0, 16000, 110.0 if number % 2 == 0 else 1760.0, seed=number)
        rows.append({"clip_id": f"c{number}.wav", "path": f"audio/c{number}.wav", "instrument": instrument,
                     "split": "train" if number < 4 else "eval"})
        pairs.append(QAPair(f"c{number}.wav", "What instrument is playing?", f"A {instrument}."))
    with open(corpus / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_musicqa(corpus / "qa_train.json", pairs[:4])
    held_out = {r["clip_id"]: r["instrument"] for r in rows if r["split"] == "eval"}
    lines: list[str] = []
    result = run_vision_steps(tmp_path / "out", corpus, tiny_llama, held_out, ((4, 1e-2), (4, 1e-3)), 2, 0, "cpu", 0,
                              False, lines.append)
    assert set(result.listening) == {"image", "video"}
    for modality, looking in result.listening.items():
        assert looking.clips == 2 and set(looking.accuracy) == {"true", "shuffled"}, modality
        assert len(FeatureStore.open(str(result.stores[modality]))) == 6
    assert len(result.losses) == 1 and [line.split(" ", 2)[1] for line in lines] == ["1/4]", "2/4]", "3/4]", "4/4]"]
    images = sorted((tmp_path / "out" / "vision" / "images").iterdir())
    assert len(images) == 6 and not list((tmp_path / "out" / "vision").rglob("*.tmp.*"))
    again = run_vision_steps(tmp_path / "out", corpus, tiny_llama, held_out, ((4, 1e-2), (4, 1e-3)), 2, 0, "cpu", 0,
                             False, lines.append)  # everything reused: the same greedy answers
    assert {m: r.answers for m, r in again.listening.items()} == {m: r.answers for m, r in result.listening.items()}
