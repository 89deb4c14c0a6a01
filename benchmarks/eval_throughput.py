"""Evaluation costs, measured side by side in one run.

  scoring      all metrics (the paper's four with MiniLM BERTScore, and the standard ones) on 5,040 QA pairs,
               the size of EvalMusicQA.json: cold (empty cache) and again (cached), with the cold time of
               each metric; then a whole answers file as `eval generate` writes it (the model and four
               controls, 25,200 rows) cold. The pairs are synthetic music descriptions of MusicQA-like
               length (references ~46 words, answers ~31; the real file cannot be downloaded here).
  generation   `mullama eval generate` answers/s and tokens/s from stored stacks with a random-weight LLaMA
               (greedy, a fixed answer length), one pair at a time against batches.

    python benchmarks/eval_throughput.py --work /tmp/eval-bench [--pairs 5040] [--llama-size mini]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from mullama.config import build_config
from mullama.data.musicqa import QAPair, write_musicqa
from mullama.encoder_identity import EncoderIdentity
from mullama.eval import metrics
from mullama.eval.config import EvalGenerateConfig, EvalScoreConfig
from mullama.eval.answering import answer_questions
from mullama.eval.score import run_score
from mullama.fixtures.demo import minilm_folder
from mullama.fixtures.llama import write_random_llama
from mullama.model import MusicLlama
from mullama.store import ClipResult, FeatureStore, StoreSettings
from mullama.store.feature_store import SILENCE_CLIP

WORDS = {
    "mood": "calm joyful melancholic energetic dreamy tense uplifting somber playful serene".split(),
    "instrument": "piano violin cello acoustic guitar drums synthesizer trumpet flute organ bass saxophone".split(),
    "genre": "jazz rock classical electronic folk pop ambient blues hip-hop orchestral".split(),
    "tempo": "slow moderate fast driving relaxed steady brisk".split(),
    "texture": "layered sparse warm bright airy dense reverberant crisp smooth distorted".split(),
}
TEMPLATES = [
    "The song is a {mood} {genre} piece led by the {instrument} with a {tempo} tempo.",
    "A {texture} {instrument} melody plays over {texture} {instrument} chords, giving the track a {mood} feel.",
    "The rhythm section keeps a {tempo} groove while the {instrument} adds {texture} accents.",
    "Overall the music sounds {mood} and {texture}, typical of {genre} with some {genre} influences.",
    "It could suit a film scene or a playlist for {mood} moments, thanks to the {instrument} and the {tempo} pace.",
]


def description(rng: random.Random, sentences: int) -> str:
    return " ".join(rng.choice(TEMPLATES).format(**{k: rng.choice(v) for k, v in WORDS.items()})
                    for _ in range(sentences))


CONDITIONS = ["model", "shuffled", "silence", "other-track", "knn"]


def write_answers(path: Path, count: int, conditions: list[str]) -> None:
    """Rows like `eval generate` writes: generated conditions get new answers; other-track answers are other
    pairs' references; knn answers come from a separate pool of training references."""
    rng = random.Random(0)
    questions = ["Describe the audio", "What is the mood of the music?", "What instruments are playing?",
                 "What can be inferred from the audio?"]
    references = [description(rng, 3) for _ in range(count)]
    training = [description(rng, 3) for _ in range(count // 4)]
    with open(path, "w") as handle:
        for condition in conditions:
            for number in range(count):
                answer = {"other-track": lambda: references[(number + 4) % count],
                          "knn": lambda: rng.choice(training)}.get(condition, lambda: description(rng, 2))()
                handle.write(json.dumps({"pair": number, "audio_name": f"track{number // 4}.mp3",
                                         "question": questions[number % 4], "reference": references[number],
                                         "answer": answer, "condition": condition,
                                         "settings": {"conditions": conditions}}) + "\n")


def timed_score(answers: Path, out: Path, cache: Path) -> tuple[float, float]:
    shutil.rmtree(cache, ignore_errors=True)
    config = build_config(EvalScoreConfig, {"answers": str(answers), "out": str(out), "progress": False,
                                            "bertscore_model": minilm_folder(), "cache_dir": str(cache)})
    started = time.perf_counter()
    run_score(config)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert run_score(config).computed == 0
    return cold, time.perf_counter() - started


def scoring(work: Path, count: int) -> dict:
    answers = work / "answers.jsonl"
    write_answers(answers, count, ["model"])
    pairs = [(r["reference"], r["answer"]) for r in map(json.loads, answers.read_text().splitlines())]
    words = np.mean([len(r.split()) for r, _ in pairs]), np.mean([len(a.split()) for _, a in pairs])
    model = metrics.BertScoreModel.from_folder(minilm_folder())
    per_metric = {}
    for name, run in [("char_bleu", lambda: metrics.char_bleu(pairs)), ("meteor", lambda: metrics.meteor(pairs)),
                      ("rouge_l", lambda: metrics.rouge_l(pairs)), ("sacrebleu", lambda: metrics.sacre_bleu(pairs)),
                      ("bertscore", lambda: metrics.bertscore(pairs, model))]:
        started = time.perf_counter()
        run()
        per_metric[name] = time.perf_counter() - started
    cold, warm = timed_score(answers, work / "scores", work / "cache")
    everything = work / "answers-all.jsonl"
    write_answers(everything, count, CONDITIONS)
    all_cold, all_warm = timed_score(everything, work / "scores-all", work / "cache-all")
    return {"pairs": count, "reference_words": round(float(words[0]), 1), "answer_words": round(float(words[1]), 1),
            "cold_s": round(cold, 2), "cached_s": round(warm, 2),
            "per_metric_cold_s": {k: round(v, 2) for k, v in per_metric.items()},
            "five_conditions": {"rows": count * len(CONDITIONS), "cold_s": round(all_cold, 2),
                                "cached_s": round(all_warm, 2)}}


def generation(work: Path, llama_size: str, pairs: int, tokens: int, batches: list[int]) -> dict:
    llama = write_random_llama(work / f"llama-{llama_size}", llama_size, seed=0)
    encoder = EncoderIdentity("synthetic", "c" * 64, "w" * 64, 24000, 25, 1024)  # MERT-330M stack shape
    store = FeatureStore.open_or_create(str(work / "store"), encoder, StoreSettings(precision="fp16"))
    rng = np.random.default_rng(0)
    if len(store) < pairs // 4:
        results = [ClipResult(f"track{i}.mp3", f"src/{i}", "h", 60.0, rng.normal(size=(1, 25, 1024)).astype(np.float32))
                   for i in range(pairs // 4)]
        results.append(ClipResult(SILENCE_CLIP, "silence", "", 1.0, np.zeros((1, 25, 1024), np.float32)))
        store.write_partition(results)
    adapter = MusicLlama.create(llama, encoder, device="cpu", seed=0).save(work / "adapter")
    questions = ["Describe the audio", "What is the mood of the music?", "What instruments are playing?",
                 "What can be inferred from the audio?"]
    write_musicqa(work / "qa.json", [QAPair(f"track{i // 4}.mp3", questions[i % 4], "x") for i in range(pairs)])
    rates = {}
    for batch in batches:
        out = work / f"answers-b{batch}.jsonl"
        out.unlink(missing_ok=True)
        report = answer_questions(build_config(EvalGenerateConfig, {
            "store": str(work / "store"), "adapter": str(adapter), "llama": str(llama), "qa": str(work / "qa.json"),
            "out": str(out), "controls": "none", "temperature": 0.0, "max_new_tokens": tokens, "batch_size": batch,
            "device": "cpu", "progress": False}))
        rates[batch] = report.answered_now / report.seconds
    one = rates[batches[0]]
    return {"llama": llama_size, "pairs": pairs, "max_new_tokens": tokens,
            "answers_per_s": {str(b): round(r, 2) for b, r in rates.items()},
            "tokens_per_s_at_most": {str(b): round(r * tokens, 1) for b, r in rates.items()},
            "speedup_over_batch_1": {str(b): round(r / one, 2) for b, r in rates.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/eval-bench")
    parser.add_argument("--pairs", type=int, default=5040)
    parser.add_argument("--llama-size", default="mini")
    parser.add_argument("--generate-pairs", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"scoring": scoring(work, args.pairs),
              "generation": generation(work, args.llama_size, args.generate_pairs, args.tokens, [1, 8, 16])}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
