"""The writer protocol on a real S3 API: moto's server on 127.0.0.1, reached through s3fs, as a cluster's
nodes reach a bucket. Exclusive creation uses S3's conditional PUT (If-None-Match: *)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from mullama.encoder_identity import EncoderIdentity
from mullama.extract.config import ExtractConfig
from mullama.extract.mert import MertEncoder
from mullama.extract.runner import run_local
from mullama.store import ClipResult, FeatureStore, StoreSettings
from mullama.store.location import Location
from mullama.store.writers import WriterLease
from tests.helpers import assert_one_creator_wins, committed_clip_rows, race, short_clips

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
pytestmark = pytest.mark.timeout(300)
IDENTITY = EncoderIdentity("enc", "c" * 64, "w" * 64, 24000, 3, 8)


@pytest.fixture(scope="module")
def bucket():
    import fsspec

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    previous = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir("mullama-test")
    yield "s3://mullama-test"
    s3fs.S3FileSystem.clear_instance_cache()
    if previous is None:
        fsspec.config.conf.pop("s3", None)
    else:
        fsspec.config.conf["s3"] = previous
    server.stop()


def config(folder: Path, mert: Path, store: str) -> ExtractConfig:
    return ExtractConfig(input=str(folder), mert=str(mert), store=store, workers=0, progress=False, batch_size=4,
                         partition_size=2)


def test_conditional_creation_on_s3(bucket):
    location = Location(f"{bucket}/exclusive")
    assert location.create_exclusive("zarr.json", b"first")
    assert not location.create_exclusive("zarr.json", b"second")
    assert location.read_bytes("zarr.json") == b"first"


def test_racing_creators_on_s3_never_mix_encoders(bucket):
    for trial in range(10):
        assert_one_creator_wins(f"{bucket}/race{trial}")


def test_concurrent_writers_on_s3_commit_each_clip_once(bucket, tiny_mert, tmp_path):
    folder, url = short_clips(tmp_path / "audio", 10), f"{bucket}/shared"
    encoder = MertEncoder.load(tiny_mert, "cpu")
    summaries = race(*[lambda: run_local(config(folder, tiny_mert, url), encoder)] * 2)
    store = FeatureStore.open(url)
    assert len(store) == 10 and store.verify() == []
    assert committed_clip_rows(store) <= 10 + 2 * 2  # at most the partitions in flight when both started
    assert all(s.ok + s.skipped == 10 for s in summaries), summaries
    assert run_local(config(folder, tiny_mert, url), encoder).processed == 0
    assert store.get(store.clip_ids()).shape == (10, 4, 64)


def test_gc_on_s3_keeps_a_live_writers_partition(bucket):
    store = FeatureStore.create(f"{bucket}/gc", IDENTITY, StoreSettings())
    half = [ClipResult("x", "x.wav", window_stacks=np.ones((1, 3, 8), np.float32))]

    def refuse() -> None:
        raise RuntimeError("killed before the commit")

    with WriterLease(store.location, "rlive-1"):
        with pytest.raises(RuntimeError):
            store.write_partition(half, "rlive-1-00000-a0", before_commit=refuse)
        with pytest.raises(RuntimeError):
            store.write_partition(half, "rgone-1-00000-a0", before_commit=refuse)  # no lease: a dead writer's
        time.sleep(0.05)
        assert store.remove_uncommitted(min_age=0) == ["rgone-1-00000-a0"]
        assert store.uncommitted_partitions() == ["rlive-1-00000-a0"]
    assert store.remove_uncommitted(min_age=0) == ["rlive-1-00000-a0"]


def test_a_manifest_in_the_bucket_lists_urls_beside_it(bucket):
    import fsspec

    from mullama.data.manifest import resolve_sources
    from mullama.errors import MullamaError

    url = f"{bucket}/manifests/clips.csv"
    with fsspec.open(url, "w") as handle:
        handle.write("clip_id,path\na,audio/a.wav\nb,s3://elsewhere/b.wav\n")
    assert [(s.clip_id, s.path) for s in resolve_sources(url)] == [
        ("a", f"{bucket}/manifests/audio/a.wav"), ("b", "s3://elsewhere/b.wav")]
    with pytest.raises(MullamaError, match="does not exist"):
        resolve_sources(f"{bucket}/manifests/missing.jsonl")
    with pytest.raises(MullamaError, match="must be a .csv or .jsonl manifest"):
        resolve_sources(f"{bucket}/manifests/clips.json")
