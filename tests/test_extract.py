import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from mullama.extract.runner import ExtractConfig, run_local
from mullama.store import FeatureStore
from tests.helpers import committed_clip_rows, data_committed, write_tone


def direct_windows(path: Path, mert: Path, window_seconds: float, min_window_seconds: float) -> np.ndarray:
    """Reference computation written from docs/audio-encoder.md with plain transformers calls."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = soxr.resample(samples.mean(axis=1), rate, 24000, quality="HQ").astype(np.float32)
    size, minimum = int(window_seconds * 24000), int(min_window_seconds * 24000)
    windows = [audio[s:s + size] for s in range(0, len(audio), size)]
    if len(windows) > 1 and len(windows[-1]) < max(minimum, 400):
        windows.pop()
    config = HubertConfig.from_pretrained(mert)
    config.tie_last_hidden_states = True
    model = HubertModel.from_pretrained(mert, config=config, dtype=torch.float32).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(mert)
    stacks = []
    for window in windows:
        values = extractor(window, sampling_rate=24000, return_tensors="pt").input_values
        with torch.inference_mode():
            hidden = model(values, output_hidden_states=True).hidden_states
        stacks.append(torch.stack([h[0].mean(0) for h in hidden]).numpy())
    return np.stack(stacks)


def config(input_path, mert, store, **overrides) -> ExtractConfig:
    values = dict(input=str(input_path), mert=str(mert), store=str(store), window_seconds=1.0,
                  min_window_seconds=0.5, workers=0, progress=False, batch_size=4)
    values.update(overrides)
    return ExtractConfig(**values)


@pytest.mark.parametrize("workers", [0, 1])
def test_store_matches_direct_hubert_including_multi_window_clips(audio_folder, tiny_mert, tmp_path, workers):
    summary = run_local(config(audio_folder, tiny_mert, tmp_path / "store", workers=workers, partition_size=3))
    assert summary.ok == 8 and not summary.failures and summary.partitions == 4  # 3 + the silence stack
    store = FeatureStore.open(str(tmp_path / "store"))
    assert sorted(store.clip_ids()) == sorted(p.relative_to(audio_folder).as_posix()
                                              for p in audio_folder.rglob("*.*"))
    multi_window = 0
    for clip_id in store.clip_ids():
        expected = direct_windows(audio_folder / clip_id, tiny_mert, 1.0, 0.5)
        windows = store.windows(clip_id)
        multi_window += len(windows) > 1
        np.testing.assert_allclose(windows.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(store.get([clip_id])[0].astype(np.float32), expected.mean(axis=0),
                                   rtol=2e-3, atol=2e-3)
    assert multi_window >= 5
    record = store.record("set0/clip0.wav")
    assert record.duration == pytest.approx(1.3, abs=1e-3) and len(record.content_hash) == 64


def test_rerun_skips_committed_clips_and_adds_new_ones(audio_folder, tiny_mert, tmp_path):
    first = run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    assert first.processed == 8
    again = run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    assert again.processed == 0 and again.skipped == 8
    write_tone(audio_folder / "new" / "late.wav", 1.1, 24000, 500.0)
    more = run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    assert more.processed == 1 and more.skipped == 8
    store = FeatureStore.open(str(tmp_path / "store"))
    assert len(store) == 9 and len(store.commits()) == 3  # 2 + the silence stack


def test_bad_files_are_recorded_and_the_batch_completes(audio_folder, tiny_mert, tmp_path):
    bad = audio_folder / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.mp3").write_text("definitely not audio\n" * 50)
    good = (audio_folder / "set0" / "clip0.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(good[:30])
    sf.write(str(bad / "nan.wav"), np.array([0.0, np.nan] * 24000, dtype=np.float32), 24000, subtype="FLOAT")
    sf.write(str(bad / "blip.wav"), np.zeros(200, dtype=np.float32), 24000)
    summary = run_local(config(audio_folder, tiny_mert, tmp_path / "store", workers=1))
    assert summary.ok == 8 and len(summary.failures) == 5
    assert summary.failure_reasons() == {"empty": 1, "not_audio": 1, "unreadable": 1, "non_finite": 1, "too_short": 1}
    store = FeatureStore.open(str(tmp_path / "store"))
    assert {r.clip_id: r.reason.split(":")[0] for r in store.failures()} == {
        "bad/empty.wav": "empty", "bad/text.mp3": "not_audio", "bad/truncated.wav": "unreadable",
        "bad/nan.wav": "non_finite", "bad/blip.wav": "too_short"}
    again = run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    assert again.processed == 0  # failures are remembered ...
    retried = run_local(config(audio_folder, tiny_mert, tmp_path / "store", retry_failed=True))
    assert retried.processed == 5 and len(retried.failures) == 5  # ... until asked to retry


def test_manifest_and_musicqa_inputs_keep_their_clip_ids(audio_folder, tiny_mert, tmp_path):
    (tmp_path / "m.csv").write_text("clip_id,path\nfirst," + str(audio_folder / "set0/clip0.wav")
                                    + "\nsecond,audio/set1/clip1.flac\n")
    run_local(config(tmp_path / "m.csv", tiny_mert, tmp_path / "s1"))
    assert FeatureStore.open(str(tmp_path / "s1")).clip_ids() == ["first", "second"]
    from mullama.data.musicqa import QAPair, write_musicqa

    write_musicqa(tmp_path / "qa.json", [QAPair("clip2.wav", "q", "a"), QAPair("clip4.flac", "q2", "a2"),
                                         QAPair("clip2.wav", "q3", "a3")])
    run_local(config(tmp_path / "qa.json", tiny_mert, tmp_path / "s2", audio_root=str(audio_folder / "set0")))
    assert FeatureStore.open(str(tmp_path / "s2")).clip_ids() == ["clip2.wav", "clip4.flac"]


def extract_command(input_path, mert, store) -> list[str]:
    return [sys.executable, "-m", "mullama.cli", "extract", str(input_path), "--mert", str(mert),
            "--store", str(store), "--window-seconds", "60",
            "--partition-size", "3", "--workers", "1", "--no-progress"]


def test_kill_minus_nine_then_rerun_gives_the_uninterrupted_result(tmp_path, tiny_mert):
    folder = tmp_path / "many"
    for number in range(36):  # one window each, of distinct lengths: no batch mixes clips, results are bit-exact
        write_tone(folder / f"c{number:02d}.wav", 1.0 + 0.05 * number, 44100, 100.0 + 15 * number, seed=number)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    killed_store = tmp_path / "killed"
    process = subprocess.Popen(extract_command(folder, tiny_mert, killed_store), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    commits = killed_store / "commits"
    deadline = time.time() + 120
    while time.time() < deadline and not data_committed(commits):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    partial = FeatureStore.open(str(killed_store))
    assert 0 < len(partial) < 36, "the kill must land mid-job"
    resumed = subprocess.run(extract_command(folder, tiny_mert, killed_store), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    clean_store = tmp_path / "clean"
    subprocess.run(extract_command(folder, tiny_mert, clean_store), env=env, check=True, capture_output=True,
                   timeout=300)
    killed, clean = FeatureStore.open(str(killed_store)), FeatureStore.open(str(clean_store))
    ids = sorted(clean.clip_ids())
    assert len(ids) == 36 and sorted(killed.clip_ids()) == ids  # no clip missing, none twice
    assert committed_clip_rows(killed) == 36
    np.testing.assert_array_equal(killed.get(ids), clean.get(ids))
    for clip_id in ids:
        np.testing.assert_array_equal(killed.windows(clip_id), clean.windows(clip_id))
    assert killed.verify() == []


def test_store_on_an_fsspec_memory_url(audio_folder, tiny_mert):
    url = "memory://extract-test/store"
    summary = run_local(config(audio_folder, tiny_mert, url))
    assert summary.ok == 8
    store = FeatureStore.open(url)
    assert len(store) == 8 and store.verify() == [] and store.get(store.clip_ids()).shape == (8, 4, 64)


def test_manifest_of_object_store_urls(audio_folder, tiny_mert, tmp_path):
    """Audio addressed by fsspec URLs (memory:// here, s3:// on a cluster) is fetched by the readers."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ("set0/clip0.wav", "set1/clip1.flac"):
        fs.pipe(f"/bucket/{name}", (audio_folder / name).read_bytes())
    (tmp_path / "remote.csv").write_text("clip_id,path\na,memory://bucket/set0/clip0.wav\n"
                                         "b,memory://bucket/set1/clip1.flac\nc,memory://bucket/absent.wav\n")
    summary = run_local(config(tmp_path / "remote.csv", tiny_mert, tmp_path / "store"))
    assert summary.ok == 2 and summary.failures[0][0] == "c" and summary.failures[0][1].startswith("missing")
    run_local(config(audio_folder, tiny_mert, tmp_path / "reference"))
    local, remote = FeatureStore.open(str(tmp_path / "reference")), FeatureStore.open(str(tmp_path / "store"))
    np.testing.assert_array_equal(remote.get(["a", "b"]), local.get(["set0/clip0.wav", "set1/clip1.flac"]))
    assert remote.record("a").content_hash == local.record("set0/clip0.wav").content_hash


def test_extraction_caches_the_silence_stack_once(audio_folder, tiny_mert, tmp_path):
    from mullama.extract.mert import MertEncoder
    from mullama.store import SILENCE_CLIP

    run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    run_local(config(audio_folder, tiny_mert, tmp_path / "store"))
    store = FeatureStore.open(str(tmp_path / "store"))
    assert SILENCE_CLIP not in store.clip_ids() and len(store) == 8
    assert sum(SILENCE_CLIP in [c.clip_id for c in commit.clips] for commit in store.commits()) == 1
    expected = MertEncoder.load(tiny_mert).encode([np.zeros(24000, np.float32)])[0]
    np.testing.assert_allclose(store.silence_stack().astype(np.float32), expected, rtol=2e-3, atol=2e-3)
