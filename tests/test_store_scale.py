"""What keeps the catalog cheap at a million clips (benchmarks/scale.py measures it): every command reads each
commit record once, and the page's clip search and the clip count do not walk the catalog per request."""

import collections
import json

import pytest
from typer.testing import CliRunner

from mullama.cli import app
from mullama.serve.services.catalog import Catalog, ClipIdText
from mullama.store import ClipResult, FeatureStore
from mullama.store.location import Location
from tests.helpers import synthetic_store

runner = CliRunner()


@pytest.fixture
def commit_reads(monkeypatch):
    """Counts of reads of each commit record (commits/<id>.json) through the store's one reader, Location."""
    counts: collections.Counter[str] = collections.Counter()
    read_bytes, read_many = Location.read_bytes, Location.read_many

    def counted_bytes(self, key):
        counts.update([key] if key.startswith("commits/") else [])
        return read_bytes(self, key)

    def counted_many(self, keys):
        counts.update(key for key in keys if key.startswith("commits/"))
        return read_many(self, keys)

    monkeypatch.setattr(Location, "read_bytes", counted_bytes)
    monkeypatch.setattr(Location, "read_many", counted_many)
    return counts


def test_each_catalog_command_reads_each_commit_record_once(tmp_path, commit_reads):
    url = str(tmp_path / "store")
    store = synthetic_store(url, 240, per_partition=80)
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"audio_name": clip, "conversation": [{"from": "human", "value": "What?"},
                                                                    {"from": "gpt", "value": "Music."}] * 3}
                              for clip in store.clip_ids()]))
    records = {f"commits/{commit.partition}.json" for commit in store.commits()}
    commands = {"info": ["store", "info", url], "verify": ["store", "verify", url], "gc": ["store", "gc", url],
                "export-shards": ["store", "export-shards", url, "--out", str(tmp_path / "shards"), "--qa", str(qa),
                                  "--no-progress"],
                "index build": ["index", "build", url, "--no-progress"]}
    for name, words in commands.items():
        commit_reads.clear()
        result = runner.invoke(app, words)
        assert result.exit_code == 0, (name, result.output)
        assert set(commit_reads) == records and set(commit_reads.values()) == {1}, (name, dict(commit_reads))

    commit_reads.clear()
    catalog = Catalog(FeatureStore.open(url), None)
    assert len(catalog) == 240 and catalog.stored("clip00007") and len(catalog.search("clip", 100)) == 100
    assert set(commit_reads.values()) == {1} and set(commit_reads) == records


def test_clip_search_finds_ids_by_any_part_in_commit_order_ignoring_case():
    ids = ClipIdText(["Rock/Song.wav", "jazz/song2.wav", "İstanbul.wav", "rock/other.wav", "x"], commits=1)
    assert ids.containing("song", 10) == ["Rock/Song.wav", "jazz/song2.wav"]
    assert ids.containing("rock/", 10) == ["Rock/Song.wav", "rock/other.wav"]
    assert ids.containing("rock/", 1) == ["Rock/Song.wav"]
    assert ids.containing("", 3) == ["Rock/Song.wav", "jazz/song2.wav", "İstanbul.wav"]
    assert ids.containing("bul.wav", 10) == ["İstanbul.wav"]  # lower() made that id one character longer
    assert ids.containing("x", 10) == ["x"] and ids.containing("wav\0x", 10) == []  # never across two ids
    assert ids.containing("absent", 10) == [] and ClipIdText([], 0).containing("", 5) == []


def test_search_and_count_see_a_new_commit(tmp_path):
    url = str(tmp_path / "store")
    store = synthetic_store(url, 20, per_partition=10)
    catalog = Catalog(store, None)
    assert len(catalog) == 20 and catalog.clip_ids("clip0002", 10) == []
    synthetic_store(url, 5, start=20)  # another writer
    store.refresh()
    assert len(catalog) == 25 and catalog.clip_ids("clip0002", 10) == [f"clip0002{n}" for n in range(5)]
    store.write_partition([ClipResult("clip00003", "again.wav", "h", 3.0, None, reason="decode: broken")])
    assert len(store) == 24 and "clip00003" not in catalog.clip_ids("clip0000", 10)
