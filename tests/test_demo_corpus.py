import csv
import shutil

import numpy as np
import pytest

from mullama.data.musicqa import read_musicqa
from mullama.extract.audio import load_audio, probe
from mullama.fixtures.config import DemoConfig
from mullama.fixtures.corpus import INSTRUMENTS, build_demo_corpus

pytestmark = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return build_demo_corpus(DemoConfig(out=str(root / "a"), clips=8, seed=3, long_fraction=0.25,
                                        eval_fraction=0.5))


def rows(corpus):
    with open(corpus.manifest) as handle:
        return list(csv.DictReader(handle))


def test_manifest_metadata_matches_the_files(corpus):
    table = rows(corpus)
    assert len(table) == 8
    formats = {row["format"] for row in table}
    assert formats == {"wav", "flac", "ogg", "mp3"}
    assert len({row["sample_rate"] for row in table}) > 1 and {row["channels"] for row in table} == {"1", "2"}
    assert {row["instrument"] for row in table} == set(INSTRUMENTS)
    for row in table:
        info = probe(corpus.root / row["path"])
        assert info.sample_rate == int(row["sample_rate"]) and info.channels == int(row["channels"])
        assert abs(info.duration - float(row["duration_s"])) < 0.1
        assert row["composer"] and row["key"] and 60 <= int(row["tempo_bpm"]) <= 150
    assert any(float(row["duration_s"]) > 60 for row in table), "some clips must need several windows"


def test_audio_is_real_music_not_silence(corpus):
    for row in rows(corpus)[:4]:
        audio = load_audio(corpus.root / row["path"], 24000)
        assert np.abs(audio).max() > 0.1 and audio.std() > 0.01


def test_questions_and_answers_follow_the_metadata(corpus):
    table = {row["clip_id"]: row for row in rows(corpus)}
    train, held_out = read_musicqa(corpus.qa_train), read_musicqa(corpus.qa_eval)
    assert {p.audio_name for p in train}.isdisjoint({p.audio_name for p in held_out})
    assert {p.audio_name for p in train} | {p.audio_name for p in held_out} == set(table)
    for pair in train + held_out:
        row = table[pair.audio_name]
        assert row["instrument"] not in pair.question
        if "instrument" in pair.question:
            assert row["instrument"] in pair.answer
        if "tempo" in pair.question:
            assert row["tempo_bpm"] in pair.answer
        if "key" in pair.question:
            assert row["key"] in pair.answer
        if "composed" in pair.question:
            assert row["composer"] in pair.answer
    instruments_held_out = {table[p.audio_name]["instrument"] for p in held_out}
    assert instruments_held_out == set(INSTRUMENTS), "every instrument is held out for the listening test"


def test_same_seed_same_corpus(corpus, tmp_path):
    again = build_demo_corpus(DemoConfig(out=str(tmp_path / "b"), clips=8, seed=3, long_fraction=0.25,
                                         eval_fraction=0.5))
    assert again.manifest.read_text() == corpus.manifest.read_text()
    assert again.qa_train.read_text() == corpus.qa_train.read_text()
    for row in rows(corpus):
        np.testing.assert_array_equal(load_audio(corpus.root / row["path"], 24000),
                                      load_audio(again.root / row["path"], 24000))


def test_missing_fluidsynth_says_how_to_install(monkeypatch, tmp_path):
    from mullama.errors import MullamaError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MullamaError, match="apt-get install"):
        build_demo_corpus(DemoConfig(out=str(tmp_path / "x"), clips=1))


def test_label_file_names_what_neighbours_should_share(corpus):
    from mullama.knn.evaluate import read_labels

    labels = read_labels(corpus.labels)
    table = {row["clip_id"]: row for row in rows(corpus)}
    assert sorted(labels) == ["composer", "instrument", "source", "style"]
    for clip, row in table.items():
        assert labels["instrument"][clip] == row["instrument"] and labels["source"][clip] == row["source_piece"]


def test_word_queries_ask_for_instruments_by_name_and_by_paraphrase(corpus):
    from mullama.knn.evaluate import read_labels, read_word_queries

    queries = read_word_queries(corpus.queries)
    instruments = set(read_labels(corpus.labels)["instrument"].values())
    assert {value for _, name, value in queries if name == "instrument"} == instruments == set(INSTRUMENTS)
    assert all(name == "instrument" for _, name, _ in queries)
    for instrument in INSTRUMENTS:
        asked = [query for query, _, value in queries if value == instrument]
        assert asked[0] == instrument and len(asked) == 3
        assert not any(instrument in paraphrase for paraphrase in asked[1:])  # paraphrases avoid the name
