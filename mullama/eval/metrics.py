"""Text metrics per (reference, answer) pair: the MU-LLaMA paper's exact computation, and today's standard one.

Paper (docs/evaluation.md): NLTK `sentence_bleu` on raw strings (character 1-4-grams), NLTK METEOR on
`wordpunct_tokenize` tokens, rouge-score ROUGE-L recall with the Porter stemmer, BERTScore recall.
Standard: sacreBLEU on words (13a tokens), the same METEOR, ROUGE-L F1, BERTScore F1.
All scores are fractions in [0, 1] (sacreBLEU's 0-100 divided by 100).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import bert_score
import sacrebleu
from bert_score.utils import model2layers
from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score
from rouge_score import rouge_scorer

from mullama.errors import MullamaError
from mullama.eval.wordnet import require_wordnet
from mullama.runtime import quiet_transformers, refuse_remote_code

Pairs = Sequence[tuple[str, str]]  # (reference, answer)


def char_bleu(pairs: Pairs) -> list[float]:
    """The paper's "BLEU": sentence_bleu([reference], answer) with strings, so n-grams of characters."""
    with warnings.catch_warnings():  # NLTK warns on every pair without 4-gram overlap; the score is still 0
        warnings.simplefilter("ignore")
        return [float(sentence_bleu([reference], answer)) if answer else 0.0 for reference, answer in pairs]


def meteor(pairs: Pairs) -> list[float]:
    """NLTK METEOR (lower-cased, WordNet synonyms) on wordpunct tokens, as the paper's script."""
    require_wordnet()
    return [float(meteor_score([wordpunct_tokenize(reference)], wordpunct_tokenize(answer))) if answer else 0.0
            for reference, answer in pairs]


def rouge_l(pairs: Pairs) -> dict[str, list[float]]:
    """ROUGE-L with the Porter stemmer: recall (the paper's value) and F1 (the usual one)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(reference, answer)["rougeL"] for reference, answer in pairs]
    return {"recall": [float(s.recall) for s in scores], "f1": [float(s.fmeasure) for s in scores]}


def sacre_bleu(pairs: Pairs) -> tuple[float, list[float]]:
    """Corpus BLEU over all pairs, and each pair's sentence BLEU (smoothed, as sacreBLEU does by default)."""
    references = [reference for reference, _ in pairs]
    answers = [answer for _, answer in pairs]
    corpus = sacrebleu.corpus_bleu(answers, [references]).score / 100 if pairs else 0.0
    sentences = [sacrebleu.sentence_bleu(answer, [reference]).score / 100 for reference, answer in pairs]
    return float(corpus), [float(s) for s in sentences]


@dataclass(frozen=True)
class BertScoreModel:
    """A local BERTScore model folder and the hidden layer whose token embeddings are matched."""

    folder: str
    layer: int

    @classmethod
    def from_folder(cls, folder: str | Path, layer: int = 0) -> "BertScoreModel":
        """Layer 0 means: BERTScore's published choice for that model (roberta-large: 17), else its last layer."""
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise MullamaError(f"--bertscore-model {folder}: no config.json there; give a local Hugging Face model "
                               "folder (roberta-large for the paper's numbers)")
        config = refuse_remote_code(path, "--bertscore-model")  # bert_score loads it without trust_remote_code
        layers = int(config.get("num_hidden_layers", 0))
        if layer <= 0:
            known = [model2layers[name] for name in (path.name, str(config.get("_name_or_path", "")))
                     if name in model2layers]
            layer = known[0] if known else layers
        if not 1 <= layer <= max(layers, 1):
            raise MullamaError(f"--bertscore-layer {layer}: {folder} has {layers} layers")
        return cls(str(path.resolve()), layer)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the scores: the folder's config and weight files' sizes and times (cache key)."""
        path = Path(self.folder)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin",
                                                                                  ".txt", ".model"})
        return {"folder": self.folder, "layer": self.layer,
                "files": [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files]}


def bertscore(pairs: Pairs, model: BertScoreModel, batch_size: int = 64, progress: bool = False
              ) -> dict[str, list[float]]:
    """BERTScore recall and F1 per pair (no idf, no baseline rescaling, as the paper). A pair with an empty side
    scores 0, as BERTScore intends; it is not passed to the library, whose empty-text path fails on
    transformers 5 tokenizers."""
    recall, f1 = [0.0] * len(pairs), [0.0] * len(pairs)
    scored = [i for i, (reference, answer) in enumerate(pairs) if reference.strip() and answer.strip()]
    if scored:
        with quiet_transformers():
            _, r, f = bert_score.score([pairs[i][1] for i in scored], [pairs[i][0] for i in scored],
                                       model_type=model.folder, num_layers=model.layer, batch_size=batch_size,
                                       lang="en", verbose=progress)  # on the GPU when there is one
        for i, r_value, f_value in zip(scored, r.tolist(), f.tolist()):
            recall[i], f1[i] = float(r_value), float(f_value)
    return {"recall": recall, "f1": f1}
