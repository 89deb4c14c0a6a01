import json

import numpy as np
import pytest

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.store import ClipResult, FeatureStore, StoreSettings

IDENTITY = EncoderIdentity("enc", "c" * 64, "w" * 64, 24000, 3, 8)


def results(prefix: str, count: int, seed: int = 0, windows: int = 2) -> list[ClipResult]:
    rng = np.random.default_rng(seed)
    out = []
    for number in range(count):
        stacks = rng.standard_normal((1 + number % windows, 3, 8)).astype(np.float32)
        out.append(ClipResult(f"{prefix}{number}", f"/audio/{prefix}{number}.wav", f"h{number}", 1.5, stacks))
    return out


@pytest.fixture(params=["local", "memory"])
def store_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return f"memory://{tmp_path.name}/store"


def test_round_trip_of_clip_and_window_stacks(store_url):
    store = FeatureStore.create(store_url, IDENTITY, StoreSettings())
    first, second = results("a", 5, seed=1), results("b", 4, seed=2)
    second.insert(2, ClipResult("bad", "/audio/bad.wav", reason="unreadable: not audio"))
    store.write_partition(first)
    store.write_partition(second)
    reopened = FeatureStore.open(store_url)
    assert reopened.clip_ids() == [r.clip_id for r in first + second if r.ok]
    assert len(reopened) == 9 and "bad" not in reopened and "a3" in reopened
    assert [r.clip_id for r in reopened.failures()] == ["bad"]
    ids = ["b3", "a0", "b1", "a4"]
    by_id = {r.clip_id: r for r in first + second}
    got = reopened.get(ids)
    assert got.shape == (4, 3, 8) and got.dtype == np.float16
    for row, clip_id in zip(got, ids):
        expected = by_id[clip_id].window_stacks.mean(axis=0).astype(np.float16)
        np.testing.assert_array_equal(row, expected)
        np.testing.assert_array_equal(reopened.windows(clip_id), by_id[clip_id].window_stacks.astype(np.float16))
    batches = list(reopened.iter_batches(batch_size=4))
    assert [len(ids) for ids, _ in batches] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), reopened.get(reopened.clip_ids()))
    with pytest.raises(KeyError, match="unreadable"):
        reopened.get(["bad"])
    with pytest.raises(KeyError, match="not in store"):
        reopened.get(["nope"])
    assert reopened.verify() == []
    info = reopened.info()
    assert info["clips"] == 9 and info["failed_clips"] == 1 and info["failure_reasons"] == {"unreadable": 1}


def test_uncommitted_partition_is_invisible_and_collectable(tmp_path):
    url = str(tmp_path / "store")
    store = FeatureStore.create(url, IDENTITY, StoreSettings())
    store.write_partition(results("a", 3))
    commit = store.write_partition(results("b", 3), partition_id="p-half")
    (tmp_path / "store" / "commits" / f"{commit.partition}.json").unlink()  # as if killed before commit
    reopened = FeatureStore.open(url)
    assert reopened.clip_ids() == ["a0", "a1", "a2"]
    assert reopened.uncommitted_partitions() == ["p-half"]
    assert reopened.remove_uncommitted(min_age=0) == ["p-half"]
    assert not (tmp_path / "store" / "partitions" / "p-half").exists()


def test_later_commit_of_a_clip_wins(tmp_path):
    url = str(tmp_path / "store")
    store = FeatureStore.create(url, IDENTITY, StoreSettings())
    store.write_partition([ClipResult("x", "/x.wav", reason="unreadable: once")])
    retry = results("x", 1)
    retry[0].clip_id = "x"
    store.write_partition(retry)
    assert store.clip_ids() == ["x"] and store.failures() == []


def test_verify_detects_flipped_byte_and_missing_chunk(tmp_path):
    url = tmp_path / "store"
    store = FeatureStore.create(str(url), IDENTITY, StoreSettings())
    first = store.write_partition(results("a", 4))
    second = store.write_partition(results("b", 4))
    clip_chunk = url / "partitions" / first.partition / "clip_stacks" / "c" / "0" / "0" / "0"
    data = bytearray(clip_chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    clip_chunk.write_bytes(bytes(data))
    (url / "partitions" / second.partition / "window_stacks" / "c" / "0" / "0" / "0").unlink()
    problems = FeatureStore.open(str(url)).verify()
    assert len(problems) == 2
    assert any("clip_stacks" in p and "differs" in p for p in problems)
    assert any("window_stacks" in p and "missing" in p for p in problems)


def test_verify_detects_a_commit_that_misses_its_data_or_disagrees_on_rows(tmp_path):
    url = tmp_path / "store"
    store = FeatureStore.create(str(url), IDENTITY, StoreSettings())
    first = store.write_partition(results("a", 4))
    second = store.write_partition(results("b", 4))
    def drop_window_data(commit: dict) -> None:
        commit["files"].pop(next(key for key in commit["files"] if "window_stacks/c/" in key))

    for partition, edit in [(first.partition, drop_window_data), (second.partition, lambda c: c.update(rows=5))]:
        path = url / "commits" / f"{partition}.json"
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
    problems = FeatureStore.open(str(url)).verify()
    assert any(f"{first.partition}/window_stacks: its data is not among" in p for p in problems), problems
    assert any(f"{second.partition}/clip_stacks: shape (4, 3, 8), its commit record says (5, 3, 8)" in p
               for p in problems), problems


def test_refuses_other_encoder_or_settings(tmp_path):
    url = str(tmp_path / "store")
    FeatureStore.create(url, IDENTITY, StoreSettings())
    other = EncoderIdentity("enc", "c" * 64, "x" * 64, 24000, 3, 8)
    with pytest.raises(MullamaError, match="new store path"):
        FeatureStore.open_or_create(url, other, StoreSettings())
    with pytest.raises(MullamaError, match="window_seconds 60.0"):
        FeatureStore.open_or_create(url, IDENTITY, StoreSettings(window_seconds=30.0))
    renamed = EncoderIdentity("renamed", "c" * 64, "w" * 64, 24000, 3, 8)
    assert FeatureStore.open_or_create(url, renamed, StoreSettings()).encoder.name == "enc"
    with pytest.raises(MullamaError, match="already holds"):
        FeatureStore.create(url, IDENTITY, StoreSettings())


def test_open_rejects_non_stores(tmp_path):
    with pytest.raises(MullamaError, match="not a mullama feature store"):
        FeatureStore.open(str(tmp_path))
    import zarr

    zarr.open_group(str(tmp_path / "plain"), mode="w")
    with pytest.raises(MullamaError, match="not a mullama feature store"):
        FeatureStore.open(str(tmp_path / "plain"))


def test_store_is_plain_zarr_and_json(tmp_path):
    """Other tools can read the store without mullama."""
    import zarr

    url = tmp_path / "store"
    store = FeatureStore.create(str(url), IDENTITY, StoreSettings())
    commit = store.write_partition(results("a", 3))
    root = zarr.open_group(str(url), mode="r")
    assert root.attrs["mullama"]["encoder"]["hidden_states"] == 3
    array = root[f"partitions/{commit.partition}/clip_stacks"]
    assert array.shape == (3, 3, 8) and array.dtype == np.float16
    record = json.loads((url / "commits" / f"{commit.partition}.json").read_text())
    assert [c["clip_id"] for c in record["clips"]] == ["a0", "a1", "a2"]
