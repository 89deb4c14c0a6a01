"""`mullama eval choice`: multiple-choice listening questions scored by the model's likelihood of each option.

As in MuChoMusic, the prompt holds the question and its lettered options; the model's choice is the option
whose text, as the answer, has the highest mean log-probability per token (so long options are not
penalised for their length). Style cannot earn points here, unlike free-text metrics (docs/evaluation.md).
The same questions are scored with stacks shuffled between clips and with the silence stack.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mullama.data.choice import ChoiceItem, read_choice_items
from mullama.durable import write_atomic
from mullama.errors import MullamaError
from mullama.eval.config import EvalChoiceConfig, controls_of
from mullama.eval.listening import derangement
from mullama.model.music_llama import MusicLlama
from mullama.model.prompts import IGNORE_INDEX, pad_right, tokenize_example
from mullama.store.feature_store import FeatureStore


def option_scores(model: Any, stacks: np.ndarray, items: list[ChoiceItem]) -> list[list[float]]:
    """Mean log-probability per token of each option as the answer, for items with their (B, L+1, H) stacks."""
    tokenizer = model.tokenizer
    examples, rows = [], []
    for row, item in enumerate(items):
        for option in item.options:
            example = tokenize_example(tokenizer, item.prompt(), option, model.prompt_format)
            labels = list(example.labels)
            labels[-1] = IGNORE_INDEX  # the EOS: an option need not be the whole answer
            examples.append(type(example)(example.input_ids, labels))
            rows.append(row)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = pad_right(examples, pad)
    logits = model.logits(torch.tensor(batch["input_ids"]), stacks[rows],
                          attention_mask=torch.tensor(batch["attention_mask"]))
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = torch.tensor(batch["labels"], device=log_probs.device)[:, 1:]
    mask = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    means = ((picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    scores: list[list[float]] = [[] for _ in items]
    for row, value in zip(rows, means):
        scores[row].append(float(value))
    return scores


@dataclass
class ChoiceReport:
    out: Path
    results: dict[str, Any]
    seconds: float = 0.0
    missing: list[ChoiceItem] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.missing else 0

    def lines(self) -> list[str]:
        results = self.results
        lines = [f"multiple choice: {self.out / 'choice.json'} ({results['questions']} questions, chance "
                 f"{results['chance']:.1%}, {self.seconds:.1f} s)"]
        for name, condition in results["conditions"].items():
            kinds = ", ".join(f"{kind} {value:.0%}" for kind, value in condition["by_kind"].items())
            lines.append(f"  {name:<9} accuracy {condition['accuracy']:.1%}" + (f" ({kinds})" if kinds else ""))
        if self.missing:
            names = sorted({i.audio_name for i in self.missing})
            lines.append(f"  skipped {len(self.missing)} questions of {len(names)} clips not in the store: "
                         f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        return lines


def run_choice(config: EvalChoiceConfig) -> ChoiceReport:
    controls = controls_of(config.controls)
    items = read_choice_items(config.questions)
    store = FeatureStore.open(config.store)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MullamaError(f"--out {out} is a file; give a folder")
    present = [i for i in items if i.audio_name in store]
    missing = [i for i in items if i.audio_name not in store]
    if not present:
        raise MullamaError(f"no clip of {config.questions} is in store {config.store}; extract the audio first")
    silence = store.silence_stack().astype(np.float32) if "silence" in controls else None
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device,
                            encoder=store.encoder)
    clips = sorted({i.audio_name for i in present})
    own = dict(zip(clips, store.get(clips).astype(np.float32)))
    donors = dict(zip(clips, [clips[i] for i in derangement(len(clips), config.seed)]))
    conditions = {"model": lambda clip: own[clip], "shuffled": lambda clip: own[donors[clip]]}
    if silence is not None:
        conditions["silence"] = lambda clip: silence
    chosen = ["model"] + [c for c in controls if c in conditions and (c != "shuffled" or len(clips) > 1)]
    per_item: list[dict[str, Any]] = []
    results: dict[str, Any] = {"questions": len(present), "chance": fmean(1 / len(i.options) for i in present),
                               "scoring": "mean log-probability per token of each option as the answer",
                               "conditions": {}}
    started = time.perf_counter()
    per_batch = max(1, config.batch_size // max(len(i.options) for i in present))
    bar = tqdm(total=len(chosen) * len(present), unit="question", desc="eval choice", disable=not config.progress,
               dynamic_ncols=True)
    with bar:
        for name in chosen:
            right: list[bool] = []
            kinds: dict[str, list[bool]] = {}
            for start in range(0, len(present), per_batch):
                chunk = present[start:start + per_batch]
                stacks = np.stack([conditions[name](item.audio_name) for item in chunk])
                for item, scores in zip(chunk, option_scores(model, stacks, chunk)):
                    predicted = int(np.argmax(scores))
                    right.append(predicted == item.answer)
                    kinds.setdefault(item.kind or "all", []).append(predicted == item.answer)
                    per_item.append({"condition": name, "audio_name": item.audio_name, "question": item.question,
                                     "kind": item.kind, "answer": item.answer, "predicted": predicted,
                                     "scores": [round(s, 5) for s in scores]})
                bar.update(len(chunk))
            results["conditions"][name] = {"accuracy": fmean(right),
                                           "by_kind": {k: fmean(v) for k, v in sorted(kinds.items())}}
    accuracy = results["conditions"]
    controls_done = [accuracy[c]["accuracy"] for c in chosen if c != "model"]
    results["margin_over_best_control"] = accuracy["model"]["accuracy"] - max(controls_done) if controls_done else None
    results["margin_over_chance"] = accuracy["model"]["accuracy"] - results["chance"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "choice_items.jsonl", "".join(json.dumps(r) + "\n" for r in per_item).encode())
        write_atomic(out / "choice.json", json.dumps(results, indent=1).encode())
    except OSError as exc:
        raise MullamaError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return ChoiceReport(out, results, time.perf_counter() - started, missing)
