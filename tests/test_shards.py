import gc
import hashlib
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError
from mullama.extract.config import ExtractConfig
from mullama.extract.runner import run_local
from mullama.store import FeatureStore
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards


@pytest.fixture
def store_with_qa(audio_folder, tiny_mert, tmp_path):
    (audio_folder / "set0" / "broken.wav").write_text("not audio")
    store = tmp_path / "store"
    run_local(ExtractConfig(input=str(audio_folder), mert=str(tiny_mert), store=str(store), window_seconds=1.0,
                            min_window_seconds=0.5, workers=0, progress=False))
    ids = FeatureStore.open(str(store)).clip_ids()
    pairs = [QAPair(clip_id, f"question {n} about {clip_id}", f"answer {n}") for clip_id in ids for n in range(3)]
    pairs += [QAPair("nowhere.wav", "q", "a"), QAPair("set0/broken.wav", "q", "a")]
    write_musicqa(tmp_path / "qa.json", pairs)
    (tmp_path / "alpaca.json").write_text(json.dumps([
        {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]))
    return store, tmp_path / "qa.json", tmp_path / "alpaca.json"


def read_samples(folder):
    manifest = json.loads((folder / "shards.json").read_text())
    urls = [str(folder / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    return manifest, samples


def export(store, qa, out, **overrides):
    values = dict(store=str(store), qa=[str(qa)], out=str(out), progress=False)
    values.update(overrides)
    return export_shards(ExportShardsConfig(**values))


def test_round_trip_is_byte_identical_and_complete(store_with_qa, tmp_path):
    store_path, qa, alpaca = store_with_qa
    report = export(store_path, qa, tmp_path / "shards", text_only=[str(alpaca)], shard_mb=0.002, windows=True)
    manifest, samples = read_samples(tmp_path / "shards")
    store = FeatureStore.open(str(store_path))
    assert report.shards > 1 and len(manifest["shards"]) == report.shards
    assert manifest["totals"] == {"clips": 8, "pairs": 26, "text_items": 2}
    assert sum(s["clips"] for s in manifest["shards"]) == 8
    assert manifest["skipped"] == {"missing_clips": 1, "failed_clips": 1, "pairs": 2,
                                   "missing_examples": ["nowhere.wav"], "failed_examples": ["set0/broken.wav"]}
    assert manifest["encoder"] == store.encoder.to_dict()
    clips = [s for s in samples if not s["json"]["text_only"]]
    assert sorted(s["json"]["clip_id"] for s in clips) == sorted(store.clip_ids())
    for sample in clips:
        clip_id = sample["json"]["clip_id"]
        assert sample["npy"].dtype == np.float16
        assert sample["npy"].tobytes() == store.get([clip_id])[0].tobytes()
        assert sample["windows.npy"].tobytes() == store.windows(clip_id).tobytes()
        assert [p["answer"] for p in sample["json"]["qa"]] == ["answer 0", "answer 1", "answer 2"]
    texts = [s for s in samples if s["json"]["text_only"]]
    assert {p["question"] for s in texts for p in s["json"]["qa"]} == {"Name a primary colour.",
                                                                       "Add the numbers.\n\n2 and 3"}
    for sample in texts:
        assert sample["npy"].tobytes() == store.silence_stack().tobytes()


def test_same_seed_same_bytes_other_seed_other_order(store_with_qa, tmp_path):
    store_path, qa, _ = store_with_qa

    def digest(folder):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.glob("shard-*.tar")))).hexdigest()

    export(store_path, qa, tmp_path / "a", seed=1)
    export(store_path, qa, tmp_path / "b", seed=1)
    export(store_path, qa, tmp_path / "c", seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    order = lambda folder: [s["json"]["clip_id"] for s in read_samples(folder)[1]]  # noqa: E731
    assert sorted(order(tmp_path / "a")) == sorted(order(tmp_path / "c"))


def test_shards_are_plain_ustar_and_the_collector_runs_again_after_an_export(store_with_qa, tmp_path):
    """No pax extended headers (they cost 2 KB a sample beside a 512 B stack), and the cycle collector that an
    export pauses runs again afterwards, after a refused export too."""
    store_path, qa, _ = store_with_qa
    export(store_path, qa, tmp_path / "shards", windows=True)
    members = [m for shard in sorted((tmp_path / "shards").glob("shard-*.tar")) for m in tarfile.open(shard)]
    assert len(members) == 3 * 8 and all(m.pax_headers == {} and m.mtime == 0 for m in members)
    assert gc.isenabled()
    with pytest.raises(MullamaError, match="already holds an export"):
        export(store_path, qa, tmp_path / "shards")
    assert gc.isenabled()


def test_refuses_to_overwrite_and_needs_qa(store_with_qa, tmp_path):
    store_path, qa, _ = store_with_qa
    export(store_path, qa, tmp_path / "out")
    with pytest.raises(MullamaError, match="overwrite"):
        export(store_path, qa, tmp_path / "out")
    export(store_path, qa, tmp_path / "out", overwrite=True)
    with pytest.raises(MullamaError, match="--qa"):
        export_shards(ExportShardsConfig(store=str(store_path), out=str(tmp_path / "other"), progress=False))
