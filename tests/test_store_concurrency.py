"""Several writers on one store, changed sources and store paths (issue 9, cases 1-6), on a local disk.

The same protocol on a real S3 API is in test_s3_store.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.config import ExtractConfig
from mullama.extract.mert import MertEncoder
from mullama.extract.runner import run_local
from mullama.store import SILENCE_CLIP, ClipResult, FeatureStore, StoreSettings
from mullama.store.writers import WRITERS, WriterLease, claims_key, live_leases
from tests.helpers import assert_one_creator_wins, committed_clip_rows, race, short_clips, tone, write_tone

pytestmark = pytest.mark.timeout(300)
IDENTITY = EncoderIdentity("enc", "c" * 64, "w" * 64, 24000, 3, 8)


def config(folder: Path, mert: Path, store: Path | str, **overrides) -> ExtractConfig:
    values = dict(input=str(folder), mert=str(mert), store=str(store), workers=0, progress=False, batch_size=4,
                  partition_size=2)
    values.update(overrides)
    return ExtractConfig(**values)


@pytest.fixture(scope="module")
def encoder(tiny_mert) -> MertEncoder:
    return MertEncoder.load(tiny_mert, "cpu")


def test_gc_in_a_loop_beside_a_writer_removes_nothing_it_needs(tmp_path, tiny_mert, encoder):
    """Case 1: gc respects the live writer's lease; afterwards every clip is committed, verified and readable."""
    folder, store_path = short_clips(tmp_path / "audio", 24), tmp_path / "store"
    outcome: dict[str, object] = {}
    writer = threading.Thread(target=lambda: outcome.update(summary=run_local(
        config(folder, tiny_mert, store_path), encoder)))
    writer.start()
    removed: list[str] = []
    while writer.is_alive():
        if (store_path / "zarr.json").exists():
            store = FeatureStore.open(str(store_path))
            if live_leases(store.location):  # min_age 0 drops the age guard of a writer's first moment, before
                removed += store.remove_uncommitted(min_age=0)  # its lease is written (that guard: below)
        time.sleep(0.01)
    writer.join()
    store = FeatureStore.open(str(store_path))
    assert outcome["summary"].ok == 24 and len(store) == 24
    assert store.verify() == [] and removed == []
    assert store.get(store.clip_ids()).shape == (24, 4, 64)
    assert not (store_path / WRITERS).exists() or not os.listdir(store_path / WRITERS)  # lease released


def test_gc_removes_a_dead_writers_partitions_and_lease_but_not_a_live_ones(tmp_path):
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings())
    half = [ClipResult("x", "x.wav", window_stacks=np.ones((1, 3, 8), np.float32))]

    def refuse() -> None:
        raise RuntimeError("killed before the commit")

    with WriterLease(store.location, "rlive-1") as lease:
        with pytest.raises(RuntimeError):
            store.write_partition(half, "rlive-1-00000-a0", before_commit=refuse)
        dead = WriterLease(store.location, "rdead-1", seconds=0.05)
        dead.__enter__()
        dead._stop.set()  # no more heartbeats: as if the process froze
        with pytest.raises(RuntimeError):
            store.write_partition(half, "rdead-1-00000-a0", before_commit=refuse)
        time.sleep(0.1)
        assert set(live_leases(store.location)) == {lease.run_id}
        assert store.remove_uncommitted(min_age=0) == ["rdead-1-00000-a0"]
        assert store.uncommitted_partitions() == ["rlive-1-00000-a0"]
        assert not store.location.exists(f"{WRITERS}/rdead-1")
        with pytest.raises(MullamaError, match="lease of writer rdead-1 .* expired"):
            dead.check()  # and the frozen writer, were it to wake, refuses to commit
    assert store.remove_uncommitted(min_age=0) == ["rlive-1-00000-a0"]  # its writer has ended


def test_a_second_run_on_the_same_input_extracts_nothing_twice(tmp_path, tiny_mert, encoder):
    """Case 2: the second run leaves the first one's clips to it, waits for them, and ends with all committed."""
    folder, store_path = short_clips(tmp_path / "audio", 12), tmp_path / "store"
    summaries: dict[str, object] = {}
    first = threading.Thread(target=lambda: summaries.update(first=run_local(
        config(folder, tiny_mert, store_path), encoder)))
    first.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any((store_path / WRITERS).glob("*/claims.json")):
        time.sleep(0.01)
    second = run_local(config(folder, tiny_mert, store_path), encoder)
    first.join()
    store = FeatureStore.open(str(store_path))
    assert len(store) == 12 and committed_clip_rows(store) == 12  # each clip committed once
    assert summaries["first"].processed + second.processed == 12
    assert second.ok + second.skipped == 12 and not second.failures
    assert store.verify() == []


def test_two_runs_started_together_share_the_work(tmp_path, tiny_mert, encoder):
    """Both start at once: every clip ends committed; work done twice is at most the partitions in flight."""
    folder, store_path = short_clips(tmp_path / "audio", 12), tmp_path / "store"
    summaries = race(*[lambda: run_local(config(folder, tiny_mert, store_path), encoder)] * 2)
    store = FeatureStore.open(str(store_path))
    assert len(store) == 12 and store.verify() == []
    assert committed_clip_rows(store) <= 12 + 2 * 2
    assert all(summary.ok + summary.skipped == 12 for summary in summaries), summaries


def test_racing_creators_of_one_store_with_different_encoders_never_mix(tmp_path):
    """Case 3: the store's identity is created exclusively; the loser is refused, whichever it is."""
    for trial in range(30):
        assert_one_creator_wins(str(tmp_path / f"store{trial}"))


def test_commits_carry_the_encoder_and_verify_checks_it(tmp_path):
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings(precision="fp32"))
    result = [ClipResult("a", "a.wav", window_stacks=np.ones((1, 3, 8), np.float32))]
    commit = store.write_partition(result, "p-a", precision="fp32")
    assert EncoderIdentity.from_dict(commit.encoder) == IDENTITY and commit.settings["precision"] == "fp32"
    other = EncoderIdentity("other", "d" * 64, "v" * 64, 24000, 3, 8)
    with pytest.raises(MullamaError, match="did not write store"):
        store.write_partition(result, "p-b", encoder=other)
    with pytest.raises(MullamaError, match="precision fp32 .*bf16"):
        store.write_partition(result, "p-c", precision="bf16")
    record = tmp_path / "store" / "commits" / "p-a.json"  # a foreign writer that skipped the checks
    data = json.loads(record.read_text())
    data["encoder"], data["settings"]["precision"] = other.to_dict(), "bf16"
    record.write_text(json.dumps(data))
    problems = FeatureStore.open(str(tmp_path / "store")).verify()
    assert any("written by encoder other" in p for p in problems)
    assert any("precision fp32 (store) vs bf16" in p for p in problems)


def test_a_replaced_source_is_extracted_again_and_supersedes_its_old_row(tmp_path, tiny_mert, encoder):
    """Case 4: size/mtime changes lead to the content hash; a touched but identical file is not redone."""
    folder, store_path = short_clips(tmp_path / "audio", 4), tmp_path / "store"
    run_local(config(folder, tiny_mert, store_path), encoder)
    before = FeatureStore.open(str(store_path)).get(["c01.wav"])[0]
    os.utime(folder / "c00.wav", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content
    write_tone(folder / "c01.wav", 0.7, 24000, 880.0, seed=99)  # other audio under the same name
    again = run_local(config(folder, tiny_mert, store_path), encoder)
    assert again.processed == 1 and again.skipped == 3
    store = FeatureStore.open(str(store_path))
    expected = encoder.encode([tone(0.7, 24000, 880.0, seed=99)])[0]
    np.testing.assert_allclose(store.get(["c01.wav"])[0].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.array_equal(store.get(["c01.wav"])[0], before)
    assert len(store) == 4 and store.verify() == []
    assert run_local(config(folder, tiny_mert, store_path), encoder).processed == 0  # stable once re-extracted


def test_precision_is_recorded_and_a_store_refuses_another(tmp_path, tiny_mert, encoder):
    """Case 5: bf16 stacks into a store written in fp32 used to mix silently."""
    folder, store_path = short_clips(tmp_path / "audio", 2), tmp_path / "store"
    run_local(config(folder, tiny_mert, store_path, precision="fp32"), encoder)
    assert FeatureStore.open(str(store_path)).settings.precision == "fp32"
    bf16 = MertEncoder.load(tiny_mert, "cpu", "bf16")
    with pytest.raises(MullamaError, match="precision fp32 \\(store\\) vs bf16"):
        run_local(config(folder, tiny_mert, store_path, precision="bf16", retry_failed=True), bf16)


def test_a_reserved_clip_id_is_refused_before_any_work(tmp_path, tiny_mert, encoder):
    """Case 6: a manifest row may not replace the cached silence stack."""
    folder, store_path = short_clips(tmp_path / "audio", 2), tmp_path / "store"
    run_local(config(folder, tiny_mert, store_path), encoder)
    silence = FeatureStore.open(str(store_path)).silence_stack().copy()
    manifest = tmp_path / "clips.csv"
    manifest.write_text(f"clip_id,path\n{SILENCE_CLIP},{folder / 'c00.wav'}\nfine,{folder / 'c01.wav'}\n")
    with pytest.raises(MullamaError, match="reserves"):
        run_local(config(manifest, tiny_mert, store_path), encoder)
    store = FeatureStore.open(str(store_path))
    np.testing.assert_array_equal(store.silence_stack(), silence)
    assert "fine" not in store


def test_a_store_path_that_is_a_file_is_a_one_line_error(tmp_path, tiny_mert):
    folder = short_clips(tmp_path / "audio", 1)
    (tmp_path / "file").write_text("not a store")
    command = [sys.executable, "-m", "mullama.cli", "extract", str(folder), "--mert", str(tiny_mert), "--store",
               str(tmp_path / "file"), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: store path {tmp_path / 'file'} is a file, not a folder; "
                                                  "choose another --store"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_read_only_store_fails_before_any_encoding(tmp_path, tiny_mert, encoder):
    """Root ignores permission bits, so the command runs without the capability that lets it (setpriv)."""
    folder, store_path = short_clips(tmp_path / "audio", 2), tmp_path / "store"
    run_local(config(folder, tiny_mert, store_path), encoder)
    write_tone(folder / "new.wav", 0.6, 24000, 300.0)
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
            "--"]
    extract = [sys.executable, "-m", "mullama.cli", "extract", str(folder), "--mert", str(tiny_mert),
               "--no-progress", "--workers", "0", "--store"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    subprocess.run(["chmod", "-R", "a-w", str(store_path)], check=True)
    readonly_parent = tmp_path / "readonly"
    readonly_parent.mkdir()
    readonly_parent.chmod(0o555)
    try:
        for target, words in ((store_path, f"error: cannot write to store {store_path}: permission denied"),
                              (readonly_parent / "store", "error: cannot create store")):
            result = subprocess.run(drop + extract + [str(target)], capture_output=True, text=True, timeout=180,
                                    env=env)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines()[-1].startswith(words), result.stderr
            assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(store_path), str(readonly_parent)], check=True)
    assert "new.wav" not in FeatureStore.open(str(store_path))


def test_claims_are_recorded_per_run(tmp_path):
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings())
    with WriterLease(store.location, "r1") as lease:
        lease.claim(["b", "a"])
        assert json.loads(store.location.read_bytes(claims_key("r1"))) == ["a", "b"]
    assert not store.location.exists(claims_key("r1"))


def test_a_musicqa_name_outside_the_audio_root_is_recorded_failed_not_read(tmp_path, tiny_mert, encoder):
    folder = short_clips(tmp_path / "audio", 1)
    write_tone(tmp_path / "secret.wav", 0.6, 24000, 300.0)
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"audio_name": name, "conversation": [{"from": "human", "value": "q"},
                                                                     {"from": "gpt", "value": "a"}]}
                              for name in ("c00.wav", "../secret.wav", str(tmp_path / "secret.wav"))]))
    summary = run_local(config(qa, tiny_mert, tmp_path / "store", audio_root=str(folder)), encoder)
    assert summary.ok == 1 and summary.exit_code == 1
    assert sorted(reason.split(":")[0] for _, reason in summary.failures) == ["outside_root", "outside_root"]
    store = FeatureStore.open(str(tmp_path / "store"))
    assert all(record.content_hash == "" for record in store.failures())  # never opened


def test_a_run_over_a_larger_input_skips_what_an_earlier_run_committed_meanwhile(tmp_path, tiny_mert, encoder):
    """Overlapping inputs: the earlier run ends (and drops its lease) while the later one is still busy with its
    own clips; the later one must not redo what the earlier one committed after it planned."""
    folder, store_path = short_clips(tmp_path / "audio", 12), tmp_path / "store"
    subset = tmp_path / "subset.csv"  # the last two clips of the later run's order: the earlier run is long gone
    subset.write_text("clip_id,path\n" + "".join(f"c{n:02d}.wav,{folder / f'c{n:02d}.wav'}\n" for n in (10, 11)))
    summaries: dict[str, object] = {}
    first = threading.Thread(target=lambda: summaries.update(first=run_local(
        config(subset, tiny_mert, store_path, partition_size=1), encoder)))
    first.start()
    while not any((store_path / WRITERS).glob("*/claims.json")):
        time.sleep(0.01)
    second = run_local(config(folder, tiny_mert, store_path, partition_size=1), encoder)
    first.join()
    store = FeatureStore.open(str(store_path))
    assert len(store) == 12 and committed_clip_rows(store) == 12
    assert summaries["first"].processed + second.processed == 12 and second.processed < 12
    assert store.verify() == []


@pytest.mark.timeout(120)
def test_a_fifo_in_the_manifest_fails_once_and_never_blocks_a_rerun(tmp_path, tiny_mert, encoder):
    folder = short_clips(tmp_path / "audio", 1)
    os.mkfifo(folder / "p.wav")
    manifest = tmp_path / "clips.csv"
    manifest.write_text(f"clip_id,path\na,{folder / 'c00.wav'}\np,{folder / 'p.wav'}\n")
    first = run_local(config(manifest, tiny_mert, tmp_path / "store"), encoder)
    assert first.ok == 1 and [reason.split(":")[0] for _, reason in first.failures] == ["not_audio"]
    assert run_local(config(manifest, tiny_mert, tmp_path / "store"), encoder).processed == 0


def test_a_store_from_before_precision_was_recorded_takes_its_first_stamped_precision(tmp_path):
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings())  # no precision recorded
    result = [ClipResult("a", "a.wav", window_stacks=np.ones((1, 3, 8), np.float32))]
    store.write_partition(result, "p-a", precision="bf16")
    with pytest.raises(MullamaError, match="precision bf16 \\(store\\) vs fp32"):
        store.write_partition(result, "p-b", precision="fp32")
    with pytest.raises(MullamaError, match="precision bf16"):
        FeatureStore.open_or_create(str(tmp_path / "store"), IDENTITY, StoreSettings(precision="fp32"))


@pytest.mark.parametrize("args, words", [
    (["--store", ""], "--store '': must name a path"),
    (["--store", "{file}/sub.zarr"], "cannot create store {file}/sub.zarr: Not a directory"),
    (["--store", "{tmp}/s", "--window-seconds", "0.01"], "--window-seconds 0.01: shorter than the encoder's"),
])
def test_store_and_window_mistakes_are_one_line_errors(tmp_path, tiny_mert, args, words):
    folder = short_clips(tmp_path / "audio", 1)
    (tmp_path / "file").write_text("x")
    args = [a.format(file=tmp_path / "file", tmp=tmp_path) for a in args]
    command = [sys.executable, "-m", "mullama.cli", "extract", str(folder), "--mert", str(tiny_mert),
               "--no-progress", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: " + words.format(file=tmp_path / "file"))
    assert not (tmp_path / "s").exists() and not (tmp_path / "zarr.json").exists()


def test_a_missing_audio_root_is_a_mistake_not_a_batch_of_failures(tmp_path, tiny_mert, encoder):
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"audio_name": "c00.wav", "conversation": [{"from": "human", "value": "q"},
                                                                          {"from": "gpt", "value": "a"}]}]))
    with pytest.raises(MullamaError, match="--audio-root .* is not a folder"):
        run_local(config(qa, tiny_mert, tmp_path / "store", audio_root=str(tmp_path / "nowhere")), encoder)
    assert not (tmp_path / "store").exists()


def test_the_lease_length_setting_is_checked(monkeypatch):
    from mullama.store.writers import lease_seconds

    for bad in ("abc", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("MULLAMA_LEASE_SECONDS", bad)
        with pytest.raises(MullamaError, match="MULLAMA_LEASE_SECONDS"):
            lease_seconds()
    monkeypatch.setenv("MULLAMA_LEASE_SECONDS", "30")
    assert lease_seconds() == 30.0


def test_gc_removes_writer_debris_without_a_lease(tmp_path):
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings())
    (tmp_path / "store" / WRITERS / "rjunk-1").mkdir(parents=True)
    (tmp_path / "store" / WRITERS / "rjunk-1" / "claims.json").write_text("[]")
    store.remove_uncommitted(min_age=60)
    assert (tmp_path / "store" / WRITERS / "rjunk-1").exists()  # may be a writer's first moment
    store.remove_uncommitted(min_age=0)
    assert not (tmp_path / "store" / WRITERS / "rjunk-1").exists()


def test_removing_a_tree_another_process_is_removing_is_not_an_error(tmp_path, monkeypatch):
    """A writer's exit and `store gc` can delete the same ended lease at once (seen in CI): the loser of the
    race must neither crash nor leave part of the tree behind."""
    from mullama.store.location import Location

    lease = tmp_path / "store" / WRITERS / "r1"
    lease.mkdir(parents=True)
    for name in ("lease.json", "claims.json", "heartbeat"):
        (lease / name).write_text("x")
    location = Location(str(tmp_path / "store"))
    real_rm = location.fs.rm
    raced = []

    def rm_while_another_removes(path, recursive=False):
        if not raced:  # the other process takes one entry mid-way, and this rmtree trips over it
            raced.append(path)
            (lease / "lease.json").unlink()
            raise FileNotFoundError(str(lease / "lease.json"))
        return real_rm(path, recursive=recursive)

    monkeypatch.setattr(location.fs, "rm", rm_while_another_removes)
    location.remove(f"{WRITERS}/r1")
    assert raced and not lease.exists()
