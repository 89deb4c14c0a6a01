"""`mullama ask` and `mullama caption` with tiny random models: streaming, chat, audio against store,
refused encoders, batched captions that resume without duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mullama.config import build_config
from mullama.errors import MullamaError
from mullama.serve import caption as caption_module
from mullama.serve.ask import run_ask
from mullama.serve.caption import parts_folder, run_caption
from mullama.serve.config import AskConfig, CaptionConfig
from mullama.store import ClipResult, FeatureStore
from mullama.store.feature_store import SILENCE_CLIP
from tests.helpers import synthetic_store, write_tone

WINDOWS = [1, 3, 2, 1, 4, 1, 2, 1, 1, 3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    from mullama.model import MusicLlama

    root = tmp_path_factory.mktemp("serve")
    store = synthetic_store(str(root / "store"), clips=1)
    rng = np.random.default_rng(7)
    results = [ClipResult(f"song{i:02d}", f"src/song{i:02d}.wav", "h", 60.0 * n,
                          rng.normal(size=(n, 5, 32)).astype(np.float32)) for i, n in enumerate(WINDOWS)]
    results.append(ClipResult(SILENCE_CLIP, "silence", "", 1.0, np.zeros((1, 5, 32), np.float32)))
    store.write_partition(results, precision="fp32")
    store = FeatureStore.open(str(root / "store"))
    model = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=3)
    adapter = model.save(root / "adapter")
    return root, store, model, adapter, tiny_llama


def caption_config(setup, out: Path, **options) -> CaptionConfig:
    root, _, _, adapter, llama = setup
    return build_config(CaptionConfig, {"store": str(root / "store"), "adapter": str(adapter), "llama": str(llama),
                                        "out": str(out), "max_new_tokens": 6, "batch_size": 4, "partition_size": 3,
                                        "device": "cpu", "progress": False, **options})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_streamed_answer_equals_the_whole_answer(setup):
    _, store, model, _, _ = setup
    stack = store.get(["song01"])[0]
    for settings in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9, "seed": 11}):
        pieces = list(model.stream(stack, "Describe the audio", max_new_tokens=12, **settings))
        assert len(pieces) >= 2  # it streams, piece by piece
        assert "".join(pieces).strip() == model.answer(stack, "Describe the audio", max_new_tokens=12, **settings)
    history = [("Describe the audio", "A slow piece.")]
    streamed = "".join(model.stream(stack, "What tempo?", history=history, temperature=0.0, max_new_tokens=8))
    assert streamed.strip() == model.answer(stack, "What tempo?", history=history, temperature=0.0, max_new_tokens=8)


def test_ask_streams_and_chat_keeps_the_history(setup):
    root, store, model, adapter, llama = setup
    written: list[str] = []
    follow_ups = iter(["And the tempo?", ""])
    config = build_config(AskConfig, {"question": "Describe the audio", "store": str(root / "store"),
                                      "clip": "song02", "adapter": str(adapter), "llama": str(llama), "chat": True,
                                      "temperature": 0.0, "max_new_tokens": 8, "device": "cpu"})
    report = run_ask(config, written.append, lambda prompt: next(follow_ups))
    stack = store.get(["song02"])[0]
    first = model.answer(stack, "Describe the audio", temperature=0.0, max_new_tokens=8)
    second = model.answer(stack, "And the tempo?", history=[("Describe the audio", first)], temperature=0.0,
                          max_new_tokens=8)
    assert report.turns == [("Describe the audio", first), ("And the tempo?", second)]
    assert [line.strip() for line in "".join(written).splitlines()] == [first, second]
    with pytest.raises(MullamaError, match="one of --clip .* not both"):
        run_ask(build_config(AskConfig, {**vars(config), "audio": "x.wav"}))
    with pytest.raises(MullamaError, match="not a stored clip"):
        run_ask(build_config(AskConfig, {**vars(config), "clip": "nope"}))


def test_captions_cover_every_clip_once_in_order_with_catalog_fields(setup, tmp_path):
    report = run_caption(caption_config(setup, tmp_path / "captions.jsonl", protocol="paper", temperature=0.0))
    rows = read_rows(tmp_path / "captions.jsonl")
    _, store, model, _, _ = setup
    assert [r["clip_id"] for r in rows] == sorted(store.clip_ids()) and report.exit_code == 0
    assert parts_folder(str(tmp_path / "captions.jsonl")).list("") == ["plan.json"]
    song = next(r for r in rows if r["clip_id"] == "song04")  # 4 windows: captions of windows 0 and 2, joined
    assert song["caption_windows"] == [0, 2] and song["windows"] == 4 and song["source"] == "src/song04.wav"
    windows = store.windows("song04").astype(np.float32)
    expected = [model.answer(windows[i], "Describe the audio in detail", temperature=0.0, max_new_tokens=6)
                for i in (0, 2)]
    assert song["caption"] == " ".join(expected)
    again = run_caption(caption_config(setup, tmp_path / "captions.jsonl", protocol="paper", temperature=0.0))
    assert again.captioned_now == 0 and "already complete" in again.note


def test_a_crashed_caption_run_resumes_without_duplicates(setup, tmp_path, monkeypatch):
    clean = tmp_path / "clean.jsonl"
    run_caption(caption_config(setup, clean))  # sampled (temperature 0.6), seeded per partition
    out = tmp_path / "captions.jsonl"
    real = caption_module.caption_partition
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill between partitions
        return real(*args, **kwargs)

    monkeypatch.setattr(caption_module, "caption_partition", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_caption(caption_config(setup, out))
    monkeypatch.setattr(caption_module, "caption_partition", real)
    assert not out.exists() and [name for name in parts_folder(str(out)).list("") if name.startswith("part-")] == [
        "part-00000.jsonl", "part-00001.jsonl"]
    report = run_caption(caption_config(setup, out))
    assert report.resumed == 6 and report.captioned_now == 5
    assert out.read_text() == clean.read_text()
    with pytest.raises(MullamaError, match="other settings or clips"):
        run_caption(caption_config(setup, out, question="What is the mood?"))  # a finished run, other settings
    (tmp_path / "foreign.jsonl").write_text("{}\n")
    with pytest.raises(MullamaError, match="not a caption run's output"):
        run_caption(caption_config(setup, tmp_path / "foreign.jsonl"))
    assert run_caption(caption_config(setup, out, question="What is the mood?", overwrite=True)).captioned_now == 11


def test_caption_clip_lists_with_unknown_ids_exit_1(setup, tmp_path):
    (tmp_path / "ids.txt").write_text("song03\nmissing\nsong01\n")
    report = run_caption(caption_config(setup, tmp_path / "c.jsonl", clips=str(tmp_path / "ids.txt")))
    assert report.exit_code == 1 and report.unknown == ["missing"]
    assert [r["clip_id"] for r in read_rows(tmp_path / "c.jsonl")] == ["song03", "song01"]


def test_audio_path_equals_store_path_and_other_encoders_are_refused(tmp_path, tiny_mert, tiny_llama, setup):
    from mullama.extract.config import ExtractConfig
    from mullama.extract.runner import run_local
    from mullama.model import MusicLlama

    write_tone(tmp_path / "audio" / "tone.wav", 2.5, 44100, 330.0)
    run_local(ExtractConfig(input=str(tmp_path / "audio"), mert=str(tiny_mert), store=str(tmp_path / "store"),
                            workers=0, progress=False))
    store = FeatureStore.open(str(tmp_path / "store"))
    adapter = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=1).save(tmp_path / "adapter")
    common = {"question": "Describe the audio", "adapter": str(adapter), "llama": str(tiny_llama),
              "temperature": 0.0, "max_new_tokens": 10, "device": "cpu"}
    from_store = run_ask(build_config(AskConfig, {**common, "store": str(tmp_path / "store"), "clip": "tone.wav"}),
                         lambda text: None)
    from_audio = run_ask(build_config(AskConfig, {**common, "audio": str(tmp_path / "audio" / "tone.wav"),
                                                  "mert": str(tiny_mert)}), lambda text: None)
    assert from_audio.turns == from_store.turns
    other_adapter = setup[3]  # trained for the synthetic encoder
    with pytest.raises(MullamaError, match="encoder"):
        run_ask(build_config(AskConfig, {**common, "adapter": str(other_adapter), "audio":
                                         str(tmp_path / "audio" / "tone.wav"), "mert": str(tiny_mert)}))
    with pytest.raises(MullamaError, match="encoder"):
        run_caption(caption_config(setup, tmp_path / "c.jsonl", store=str(tmp_path / "store")))


def test_ask_with_knn_mixes_the_adapter_space_neighbours(setup):
    from mullama.knn import ClipIndex
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from mullama.model import KnnMix

    root, store, model, adapter, llama = setup
    build_index(build_config(IndexBuildConfig, {"store": str(root / "store"), "name": "space", "progress": False,
                                                "recipe": f"adapter:{adapter}"}))
    config = build_config(AskConfig, {"question": "Describe the audio", "store": str(root / "store"), "clip": "song05",
                                      "adapter": str(adapter), "llama": str(llama), "knn": "space", "knn_weight": 0.5,
                                      "temperature": 0.0, "max_new_tokens": 8, "device": "cpu"})
    report = run_ask(config, lambda text: None)
    mix = KnnMix(ClipIndex.open(str(root / "store"), "space"), weight=0.5)
    expected = model.answer(store.get(["song05"])[0], "Describe the audio", knn=mix, temperature=0.0, max_new_tokens=8)
    assert report.turns == [("Describe the audio", expected)]
    with pytest.raises(MullamaError, match="no index named"):
        run_ask(build_config(AskConfig, {**vars(config), "knn": "absent"}))


def test_caption_with_index_keeps_the_stores_text_index_up_to_date(setup, tmp_path):
    from mullama.knn import ClipIndex
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig

    root = setup[0]
    outs = []
    for name, ids in (("first", "song00\nsong01\n"), ("second", "song02\n")):
        (tmp_path / f"{name}.txt").write_text(ids)
        outs.append(tmp_path / f"{name}.jsonl")
        report = run_caption(caption_config(setup, outs[-1], clips=str(tmp_path / f"{name}.txt"), index="words",
                                            temperature=0.0))
        assert report.exit_code == 0 and any(line.startswith("indexed") for line in report.lines()), report.lines()
    index = ClipIndex.open(str(root / "store"), "words")
    assert set(index.rows_by_clip) == {r["clip_id"] for out in outs for r in read_rows(out) if r["caption"].strip()}
    assert [c["path"] for c in index.metadata.recipe.captions] == [str(out.resolve()) for out in outs]
    build_index(IndexBuildConfig(store=str(root / "store"), name="audio", progress=False))
    with pytest.raises(MullamaError, match="indexes audio stacks"):
        run_caption(caption_config(setup, tmp_path / "never.jsonl", index="audio"))
    assert not (tmp_path / "never.jsonl").exists()
