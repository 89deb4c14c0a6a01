"""export-shards replaces an export only once the new one is whole, refuses empty exports, and hashes its shards."""

import hashlib
import json

import pytest

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.store.shards import ShardSet


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_mert):
    """A store of six clips and a QA file of three pairs per clip."""
    from tests.helpers import tone_store

    root = tmp_path_factory.mktemp("export")
    ids = tone_store(root, tiny_mert, 6)
    write_musicqa(root / "qa.json", [QAPair(c, f"question {n}", f"answer {n}") for c in ids for n in range(3)])
    return root / "store", root / "qa.json"


def export(store, out, **overrides):
    store_path, qa = store
    values = dict(store=str(store_path), qa=[str(qa)], out=str(out), progress=False, shard_mb=0.002)
    values.update(overrides)
    return export_shards(ExportShardsConfig(**values))


def snapshot(folder):
    """Every file of the folder (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_with_a_malformed_qa_file_keeps_the_old_export(store, tmp_path):
    export(store, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"audio_name": "c0.wav", "conversation": [')
    with pytest.raises(MullamaError, match="bad.json is not valid JSON"):
        export(store, tmp_path / "out", qa=[str(bad)], overwrite=True)
    assert snapshot(tmp_path / "out") == before


def test_a_failure_while_writing_keeps_the_old_export_and_drops_the_staged_shards(store, tmp_path, monkeypatch):
    import mullama.store.export as export_module

    export(store, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    real, calls = export_module.clip_sample, []

    def failing(*args, **kwargs):  # the disk fills up (or the job is cancelled) in the middle of the export
        calls.append(1)
        if len(calls) == 4:
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "clip_sample", failing)
    with pytest.raises(OSError, match="No space left"):
        export(store, tmp_path / "out", seed=1, overwrite=True)
    assert snapshot(tmp_path / "out") == before  # no staging folder left behind either


def test_overwrite_swaps_the_whole_export(store, tmp_path):
    export(store, tmp_path / "out")
    old_shards = sorted(p.name for p in (tmp_path / "out").glob("shard-*.tar"))
    report = export(store, tmp_path / "out", shard_mb=500.0, seed=1, overwrite=True)
    listed = [s["name"] for s in json.loads((tmp_path / "out" / "shards.json").read_text())["shards"]]
    assert len(old_shards) > 1 and report.shards == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == sorted(
        ["shards.json", *listed])  # nothing else but the export lock


def test_an_export_in_which_no_pair_matches_is_an_error(store, tmp_path):
    qa = tmp_path / "other.json"
    write_musicqa(qa, [QAPair("nowhere.wav", "q", "a"), QAPair("nowhere.wav", "q2", "a2"),
                       QAPair("gone.wav", "q", "a")])
    with pytest.raises(MullamaError, match=r"all 3 pairs skipped \(2 clip\(s\) not in the store, 0 failed; "
                                           r"e\.g\. 'gone\.wav' is not in the store\)"):
        export(store, tmp_path / "out", qa=[str(qa)])
    assert not (tmp_path / "out").exists()


def test_each_shard_has_its_sha256_and_the_fingerprint_follows_the_data(store, tmp_path):
    export(store, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "shards.json").read_text())
    for shard in manifest["shards"]:
        assert shard["sha256"] == hashlib.sha256((tmp_path / "a" / shard["name"]).read_bytes()).hexdigest()
    export(store, tmp_path / "b")  # the same data elsewhere: the same fingerprint
    export(store, tmp_path / "c", seed=1)  # the same clips in another order: other data for a run
    fingerprints = {name: ShardSet.open(tmp_path / name).fingerprint for name in "abc"}
    assert fingerprints["a"] == fingerprints["b"] != fingerprints["c"]


def test_exports_without_shard_hashes_get_a_fingerprint_from_the_sizes(store, tmp_path):
    export(store, tmp_path / "old")
    path = tmp_path / "old" / "shards.json"
    manifest = json.loads(path.read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]
    path.write_text(json.dumps(manifest))
    first = ShardSet.open(tmp_path / "old").fingerprint
    assert ShardSet.open(tmp_path / "old").fingerprint == first
    shard = tmp_path / "old" / manifest["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes() + bytes(512))  # one more (empty) tar block: another size
    assert ShardSet.open(tmp_path / "old").fingerprint != first


def test_two_exports_into_one_folder_never_leave_it_broken(store, tmp_path):
    """The second export into the same OUT is refused while the first one writes (or runs after it): either
    way OUT ends with one whole export, and a reported success is always on disk."""
    from mullama.store.export import export_shards
    from tests.helpers import race

    store_path, qa = store
    configs = [ExportShardsConfig(store=str(store_path), qa=[str(qa)], out=str(tmp_path / "out"), progress=False,
                                  shard_mb=0.002, seed=seed, overwrite=True) for seed in (1, 2)]
    outcomes = race(*[lambda c=c: export_shards(c) for c in configs])
    assert all(not isinstance(o, Exception) or "another export is writing" in str(o) for o in outcomes), outcomes
    assert any(not isinstance(o, Exception) for o in outcomes)
    assert ShardSet.open(tmp_path / "out").pairs == 18
    listed = json.loads((tmp_path / "out" / "shards.json").read_text())["shards"]
    for shard in listed:  # the files on disk are the ones the manifest describes, byte for byte
        assert hashlib.sha256((tmp_path / "out" / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.tar")) == [s["name"] for s in listed]
    assert not list((tmp_path / "out").glob(".staging-*"))
