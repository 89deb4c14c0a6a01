"""`mullama demo` end to end, and the listening test of the issue: with tiny models trained on the demo
corpus, answers about the instrument (only the audio tells it) are right on held-out clips well above
chance with the true features, and the advantage disappears with shuffled or silent features. The demo ends
with an evaluation report of the held-out split."""

import json
import shutil
import time

import pytest

from mullama.fixtures.config import DemoRunConfig
from mullama.fixtures.demo import run_demo

pytestmark = [pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed"),
              pytest.mark.timeout(2400)]


def test_demo_runs_end_to_end_and_the_model_listens(tmp_path):
    lines: list[str] = []
    report = run_demo(DemoRunConfig(out=str(tmp_path / "demo"), progress=False), lines.append)
    assert report.extraction.ok == 64 and not report.failures
    stage2 = report.listening[2]
    accuracy, chance = stage2.accuracy, stage2.chance
    assert stage2.clips == 16 and chance == 0.25
    assert accuracy["true"] >= 0.6, accuracy
    assert accuracy["true"] - accuracy["shuffled"] >= 0.3, accuracy
    assert accuracy["silence"] <= 0.35, accuracy
    assert report.losses[2][-1] < report.losses[2][0]
    assert any("listening test after stage 2" in line for line in lines)
    evaluation = tmp_path / "demo" / "eval"
    scores = json.loads((evaluation / "scores.json").read_text())
    assert list(scores["conditions"]) == ["model", "shuffled", "silence", "other-track", "knn"]
    assert all(c["pairs"] == 144 for c in scores["conditions"].values())  # 16 clips x 9 questions
    assert scores["paper"]["bertscore"] is not None and scores["bertscore"]["layer"] == 6  # MiniLM
    choice = json.loads((evaluation / "choice.json").read_text())
    assert choice["questions"] == 48 and list(choice["conditions"]) == ["model", "shuffled", "silence"]
    assert (evaluation / "report.png").read_bytes().startswith(b"\x89PNG")
    assert any(line.startswith("  evaluation: model minus the best control") for line in lines)
    words = report.words  # the demo ends with word search, the model's captions beside the reference ones
    assert words is not None and (words.clips, words.queries, words.k) == (16, 12, 4)
    assert lines[-3:-2] == ["  |---|---|---|"] and lines[-2].startswith("  | model (stage 2 adapter, greedy) | ")
    assert lines[-1].startswith("  | reference (the corpus's own) | ")
    reference, model = words.scores["reference (the corpus's own)"], words.scores["model (stage 2 adapter, greedy)"]
    assert reference["precision"] >= 0.6 and reference["ndcg"] >= 0.6, reference  # chance: 0.25
    assert 0 <= model["precision"] <= 1 and 0 <= model["ndcg"] <= 1, model

    started = time.perf_counter()
    again = run_demo(DemoRunConfig(out=str(tmp_path / "demo"), progress=False), lines.append)
    assert again.extraction.processed == 0 and again.extraction.skipped == 64
    assert again.listening[2].accuracy == accuracy  # reused adapter, greedy answers: identical
    assert json.loads((evaluation / "scores.json").read_text())["conditions"] == scores["conditions"]
    assert time.perf_counter() - started < 120
