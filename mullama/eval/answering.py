"""`mullama eval generate`: answers to every question of an eval file, from stored stacks only.

The model answers with each clip's own stacks and under the listening controls (stacks shuffled between
clips, the silence stack); the audio-blind baselines (another track's reference to the same question, the
kNN baseline) are written beside them. Work is a fixed sequence of batches (conditions in order, pairs
sorted by clip), each seeded from (seed, condition, batch), so a resumed run writes what an uninterrupted
one would (docs/evaluation.md).
"""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mullama.data.musicqa import QAPair, read_musicqa
from mullama.durable import owned_folder
from mullama.errors import MullamaError
from mullama.outputs import refuse_output_over_inputs
from mullama.eval.answers import AnswerLog
from mullama.eval.config import EvalGenerateConfig, controls_of
from mullama.eval.knn_baseline import knn_answers
from mullama.eval.listening import derangement
from mullama.knn.clip_index import open_index
from mullama.model.checkpoint import read_manifest
from mullama.model.identity import check_encoder
from mullama.model.knn_mix import KnnMix
from mullama.model.music_llama import MusicLlama
from mullama.store.feature_store import FeatureStore
from mullama.store.stacks import ClipStacks


@dataclass
class AnsweringReport:
    out: Path
    pairs: int
    conditions: list[str]
    answered_now: int = 0
    resumed: int = 0
    dropped: int = 0  # rows of a batch cut short by a killed run, answered again
    seconds: float = 0.0
    missing: list[QAPair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.missing else 0

    def lines(self) -> list[str]:
        lines = [f"answers: {self.out} ({self.pairs} pairs x {len(self.conditions)} conditions: "
                 f"{', '.join(self.conditions)})"]
        rate = f" ({self.answered_now / self.seconds:.2f} answers/s)" if self.answered_now and self.seconds else ""
        lines.append(f"  generated now: {self.answered_now} answers in {self.seconds:.1f} s of generation{rate}; "
                     f"from an earlier run: {self.resumed}" + (f" ({self.dropped} of a cut batch redone)"
                                                               if self.dropped else ""))
        lines += [f"  {note}" for note in self.notes]
        if self.missing:
            names = sorted({p.audio_name for p in self.missing})
            lines.append(f"  skipped {len(self.missing)} pairs of {len(names)} clips not in the store: "
                         f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        lines.append(f"next: mullama eval score {self.out}")
        return lines


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def other_track_answers(pairs: list[tuple[int, QAPair]], seed: int) -> dict[int, tuple[str, str, bool]]:
    """For each pair, the reference another track got to the same question (seeded choice), or, when no other
    track was asked it, another track's reference to any question: (answer, donor clip, fallback)."""
    by_question: dict[str, list[tuple[int, QAPair]]] = {}
    for number, pair in pairs:
        by_question.setdefault(pair.question, []).append((number, pair))
    chosen: dict[int, tuple[str, str, bool]] = {}
    for number, pair in pairs:
        rng = random.Random(f"other-track/{seed}/{number}")
        same = [p for _, p in by_question[pair.question] if p.audio_name != pair.audio_name]
        fallback = not same
        pool = same or [p for _, p in pairs if p.audio_name != pair.audio_name]
        donor = rng.choice(pool) if pool else None
        chosen[number] = (donor.answer, donor.audio_name, fallback) if donor else ("", "", True)
    return chosen


def condition_stacks(source: ClipStacks, donors: dict[str, str], clip: str, condition: str
                     ) -> tuple[list[np.ndarray], str, list[int]]:
    """(stacks to answer from, whose stacks they are, window numbers) of a clip under a condition."""
    if condition == "silence":
        return [source.silence()], "silence", []
    whose = donors[clip] if condition == "shuffled" else clip
    stacks, windows = source.of(whose)
    return stacks, whose, windows


def plan_batches(numbers: list[int], conditions: list[str], batch_size: int) -> list[list[tuple[str, int]]]:
    return [[(condition, n) for n in numbers[start:start + batch_size]]
            for condition in conditions for start in range(0, len(numbers), batch_size)]


def batch_seed(seed: int, batch: list[tuple[str, int]]) -> int:
    condition, first = batch[0]
    return zlib.crc32(f"{seed}/{condition}/{first}".encode())


def answer_questions(config: EvalGenerateConfig) -> AnsweringReport:
    controls = controls_of(config.controls)
    qa_path = Path(config.qa)
    pairs = read_musicqa(qa_path)
    if not pairs:
        raise MullamaError(f"--qa {qa_path} holds no question/answer pairs")
    store = FeatureStore.open(config.store)
    check_encoder(read_manifest(config.adapter).encoder, store.encoder)  # before anything is written
    train = read_musicqa(config.train_qa) if "knn" in controls and config.train_qa else None
    if "knn" in controls and train is None:
        controls.remove("knn")
        knn_note = "knn control not run: give --train-qa (the training MusicQA file) and an index (--knn-index)"
    else:
        knn_note = ""
    index = open_index(config.knn_index, config.store) if train is not None else None
    mix = KnnMix(open_index(config.mix_index, config.store), weight=config.mix_weight) if config.mix_index else None
    out = Path(config.out)
    refuse_output_over_inputs(out, {"--qa": config.qa, "--train-qa": config.train_qa, "--store": config.store})
    present = [(n, p) for n, p in enumerate(pairs) if p.audio_name in store]
    missing = [p for p in pairs if p.audio_name not in store]
    if not present:
        raise MullamaError(f"no clip of --qa {qa_path} is in store {config.store} (first: {pairs[0].audio_name!r}); "
                           "extract the eval audio first")
    present.sort(key=lambda item: (item[1].audio_name, item[0]))
    numbers = [n for n, _ in present]
    by_number = dict(present)
    notes = [knn_note] if knn_note else []
    if "shuffled" in controls and len({p.audio_name for _, p in present}) < 2:
        controls.remove("shuffled")
        notes.append("shuffled control not run: it needs at least two clips")
    if "silence" in controls:
        store.silence_stack()  # an old store without it: one clear line now, not after hours of answers
    generated = ["model"] + [c for c in controls if c in ("shuffled", "silence")]
    baselines = [c for c in controls if c in ("other-track", "knn")]
    settings = {"qa_sha256": file_sha256(qa_path), "store": store.location.url,
                "adapter": str(Path(config.adapter).resolve()), "protocol": config.protocol,
                "temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
                "batch_size": config.batch_size, "seed": config.seed, "dtype": config.dtype,
                "mix": {"index": mix.index.folder.url, "weight": config.mix_weight} if mix else None,
                "conditions": generated + baselines}
    report = AnsweringReport(out, len(present), generated + baselines, missing=missing, notes=notes)
    if config.protocol == "paper":
        window = store.effective_settings().window_seconds
        if window != 60:
            report.notes.append(f"the store's windows are {window:g} s, not the paper's 60 s: the paper protocol "
                                "is approximated with them")
    with owned_folder(out.parent, f".{out.name}.lock", "answers folder",
                      f"another `mullama eval generate` is writing {out}; wait for it to finish"):
        if config.overwrite and out.exists():
            out.unlink()
        log = AnswerLog(out, settings)
        batches = plan_batches(numbers, generated, config.batch_size)
        baseline_batches = [[(c, n) for n in numbers] for c in baselines]
        report.dropped = log.recover(batches + baseline_batches)
        if log.repeats:
            report.notes.append(f"{log.repeats} repeated rows of {out} dropped (the first of each kept)")
        report.resumed = len(log.rows)
        for condition, batch in zip(baselines, baseline_batches):  # first: cheap, and their errors come early
            if not log.done(batch):
                log.append(_baseline_rows(condition, present, config.seed, index, train, store))
        todo = [b for b in batches if not log.done(b)]
        if todo:
            report.answered_now, report.seconds = _model_answers(config, store, by_number, todo, log, mix)
    return report


def _model_answers(config: EvalGenerateConfig, store: FeatureStore, pairs: dict[int, QAPair],
                   batches: list[list[tuple[str, int]]], log: AnswerLog, mix: KnnMix | None) -> tuple[int, float]:
    """Answer the batches; return the answers written and the seconds spent generating (model loading apart)."""
    clips = sorted({p.audio_name for p in pairs.values()})
    donors = dict(zip(clips, [clips[i] for i in derangement(len(clips), config.seed)]))
    source = ClipStacks(store, config.protocol)
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device,
                            encoder=store.encoder)
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens}
    answered = 0
    started = time.perf_counter()
    bar = tqdm(total=sum(len(b) for b in batches), unit="answer", desc="eval generate", disable=not config.progress,
               dynamic_ncols=True)
    with bar:
        for batch in batches:
            rows, stacks, questions, owners = [], [], [], []
            for condition, number in batch:
                pair = pairs[number]
                pair_stacks, whose, windows = condition_stacks(source, donors, pair.audio_name, condition)
                owners += [len(rows)] * len(pair_stacks)
                stacks += pair_stacks
                questions += [pair.question] * len(pair_stacks)
                rows.append({"pair": number, "audio_name": pair.audio_name, "question": pair.question,
                             "reference": pair.answer, "answer": "", "condition": condition, "stacks_of": whose,
                             "windows": windows})
            seed = batch_seed(config.seed, batch)
            parts: list[list[str]] = [[] for _ in rows]
            for start in range(0, len(stacks), config.batch_size):  # windows can make a batch longer
                answers = model.answer_batch(np.stack(stacks[start:start + config.batch_size]),
                                             questions[start:start + config.batch_size], knn=mix, seed=seed + start,
                                             **sampling)
                for owner, answer in zip(owners[start:start + config.batch_size], answers):
                    parts[owner].append(answer)
            for row, answer_parts in zip(rows, parts):
                row["answer"] = " ".join(answer_parts)
            log.append(rows)
            answered += len(rows)
            bar.update(len(rows))
    return answered, time.perf_counter() - started


def _baseline_rows(condition: str, present: list[tuple[int, QAPair]], seed: int, index: Any,
                   train: list[QAPair] | None, store: FeatureStore) -> list[dict[str, Any]]:
    rows = []
    if condition == "other-track":
        chosen = other_track_answers(present, seed)
        for number, pair in present:
            answer, donor, fallback = chosen[number]
            rows.append({"pair": number, "audio_name": pair.audio_name, "question": pair.question,
                         "reference": pair.answer, "answer": answer, "condition": condition, "answer_of": donor,
                         "fallback": fallback})
    else:
        results = knn_answers(index, train or [], [pair for _, pair in present], store)
        for (number, pair), result in zip(present, results):
            rows.append({"pair": number, "audio_name": pair.audio_name, "question": pair.question,
                         "reference": pair.answer, "answer": result.answer, "condition": condition,
                         "answer_of": result.neighbour, "score": None if result.score != result.score
                         else round(result.score, 6)})
    return rows
