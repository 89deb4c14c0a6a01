"""From audio: `extract --index` keeps an index current, and an audio file is queried through the same encoder."""

from __future__ import annotations

import json
import subprocess
import sys

from mullama.knn import ClipIndex
from tests.helpers import write_tone


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=300)


def test_extract_keeps_the_index_current_and_audio_queries_use_the_same_encoder(tmp_path, tiny_mert):
    audio, store = tmp_path / "audio", tmp_path / "store"
    for number in range(4):
        write_tone(audio / f"t{number}.wav", 1.5, 24000, 150.0 * (number + 1), seed=number)
    common = ["--mert", str(tiny_mert), "--store", str(store), "--workers", "0", "--no-progress", "--index", "default"]
    result = run_cli("extract", str(audio), *common)
    assert result.returncode == 0, result.stderr
    assert "indexed 4 clips" in result.stdout
    assert len(ClipIndex.open(str(store))) == 4
    for number in range(4, 6):
        write_tone(audio / f"t{number}.wav", 1.5, 24000, 150.0 * (number + 1), seed=number)
    (audio / "broken.wav").write_bytes(b"not audio")
    result = run_cli("extract", str(audio), *common)
    assert result.returncode == 1  # the broken file failed; the index still took the two new clips
    assert "indexed 2 clips" in result.stdout and len(ClipIndex.open(str(store))) == 6

    result = run_cli("index", "query", str(store), "--audio", str(audio / "t2.wav"), "--mert", str(tiny_mert),
                     "--json", "-k", "2")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["neighbours"][0]
    assert top["clip_id"] == "t2.wav" and top["score"] > 0.999  # the same audio, the same encoder: itself
    other = tmp_path / "other-mert"
    assert run_cli("models", "init-mert", str(other), "--seed", "7").returncode == 0
    result = run_cli("index", "query", str(store), "--audio", str(audio / "t2.wav"), "--mert", str(other))
    assert result.returncode == 2 and "query comes from encoder" in result.stderr


def test_an_index_written_to_an_fsspec_url(tmp_path):
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig
    from tests.helpers import synthetic_store

    synthetic_store(str(tmp_path / "store"), clips=120, per_partition=40)
    url = "memory://mullama-test/indexes/elsewhere"
    build_index(IndexBuildConfig(store=str(tmp_path / "store"), out=url, type="IVF4,SQ8", progress=False))
    synthetic_store(str(tmp_path / "store"), clips=40, seed=3, start=120)
    report = build_index(IndexBuildConfig(store=str(tmp_path / "store"), out=url, update=True, progress=False))
    assert report.added == 40 and report.rows == 160
    index = ClipIndex.open(url)
    assert len(index) == 160 and index.metadata.store["url"] == str(tmp_path / "store")
    assert [n.clip_id for n in index.search(clip_ids=["clip00150"], k=3)[0]]
    assert not (tmp_path / "store" / "indexes").exists()
