"""`mullama eval report`: Markdown, JSON and a PNG chart of the model beside its controls and the paper's rows.

The headline is the model's margin over the best control, not its raw scores (docs/evaluation.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from mullama.durable import write_atomic
from mullama.errors import MullamaError
from mullama.eval.config import EvalReportConfig

PAPER_METRICS = {"bleu": "BLEU (char)", "meteor": "METEOR", "rouge_l": "ROUGE-L R", "bertscore": "BERTScore R"}
# The MU-LLaMA paper's question-answering results on its 5,040-pair MusicQA evaluation set (docs/evaluation.md).
PUBLISHED_QA = {
    "MU-LLaMA (paper)": {"bleu": 0.306, "meteor": 0.385, "rouge_l": 0.466, "bertscore": 0.901},
    "LLaMA-Adapter (paper)": {"bleu": 0.273, "meteor": 0.334, "rouge_l": 0.413, "bertscore": 0.895},
    "LTU (paper)": {"bleu": 0.242, "meteor": 0.274, "rouge_l": 0.326, "bertscore": 0.887},
}
# MuChoMusic accuracy (docs/evaluation.md): another question set, shown as a reference line only.
PUBLISHED_CHOICE = {"MU-LLaMA on MuChoMusic": 0.324, "Qwen-Audio on MuChoMusic": 0.514}


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise MullamaError(f"{path} is not JSON ({exc}); score again to rewrite it") from None


@dataclass
class EvalReport:
    out: Path
    written: list[Path]
    headline: list[str]
    exit_code: int = 0

    def lines(self) -> list[str]:
        return self.headline + [f"report: {', '.join(str(p) for p in self.written)}"]


def headline(scores: dict[str, Any] | None, choice: dict[str, Any] | None) -> list[str]:
    lines = []
    if scores:
        margins = scores.get("margin_over_best_control") or {}
        shown = [f"{PAPER_METRICS[name]} {value:+.3f}" for name, value in margins.items() if value is not None]
        if shown:
            lines.append("model minus the best control (free text, paper metrics): " + ", ".join(shown))
    if choice:
        model = choice["conditions"]["model"]["accuracy"]
        margin = choice.get("margin_over_best_control")
        lines.append(f"multiple choice: {model:.1%} (chance {choice['chance']:.1%}"
                     + (f", margin over the best control {margin:+.1%})" if margin is not None else ")"))
    return lines


def markdown(title: str, scores: dict[str, Any] | None, choice: dict[str, Any] | None) -> str:
    parts = [f"# {title}", ""]
    parts += [f"**{line}**" for line in headline(scores, choice)] + [""]
    if scores:
        parts += ["## Free-text answers", "",
                  f"Answers: `{scores['answers']}`. Paper metrics: {scores['protocol']['paper']}. "
                  f"Standard: {scores['protocol']['standard']}.", ""]
        bert = scores["bertscore"]
        parts += [f"BERTScore: {bert['model']} (layer {bert['layer']})" if bert.get("model")
                  else f"BERTScore: not computed ({bert['why']})", ""]
        parts += ["| condition | pairs | BLEU (char) | METEOR | ROUGE-L R | BERTScore R | sacreBLEU | ROUGE-L F1 | "
                  "BERTScore F1 |", "|---|---|---|---|---|---|---|---|---|"]
        for name, result in scores["conditions"].items():
            paper, standard = result["paper"], result["standard"]
            parts.append(f"| {name} | {result['pairs']} | " + " | ".join(
                _cell(v) for v in (paper["bleu"], paper["meteor"], paper["rouge_l"], paper["bertscore"],
                                   standard["bleu"], standard["rouge_l"], standard["bertscore"])) + " |")
        for name, values in PUBLISHED_QA.items():
            parts.append(f"| {name} | 5040 | " + " | ".join(_cell(values[m]) for m in PAPER_METRICS) + " | | | |")
        parts += ["", "Published rows are the paper's, on its own evaluation set: reference lines, not a comparison "
                      "on the same questions.", ""]
    if choice:
        parts += ["## Multiple choice", "", f"{choice['questions']} questions, chance {choice['chance']:.1%}; "
                                            f"{choice['scoring']}.", "", "| condition | accuracy | by kind |",
                  "|---|---|---|"]
        for name, result in choice["conditions"].items():
            kinds = ", ".join(f"{k} {v:.0%}" for k, v in result["by_kind"].items())
            parts.append(f"| {name} | {result['accuracy']:.1%} | {kinds} |")
        parts.append("")
    return "\n".join(parts)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def chart(path: Path, title: str, scores: dict[str, Any] | None, choice: dict[str, Any] | None) -> None:
    """Grouped bars per paper metric (conditions) with the published rows as dashed lines; a choice panel."""
    panels = [p for p in ("text", "choice") if (scores if p == "text" else choice)]
    figure = Figure(figsize=(6.5 * len(panels), 5.0))  # no pyplot: no GUI backend, no global figure registry
    axes = figure.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": [2, 1][:len(panels)]})
    colours = matplotlib.colormaps["tab10"].colors
    for axis, panel in zip(axes[0], panels):
        if panel == "text":
            names = list(scores["conditions"])
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                values = [scores["conditions"][name]["paper"][m] or 0.0 for m in PAPER_METRICS]
                axis.bar([m + i * width for m in range(len(PAPER_METRICS))], values, width, label=name,
                         color=colours[i % len(colours)])
            for j, (name, values) in enumerate(PUBLISHED_QA.items()):
                for m, metric in enumerate(PAPER_METRICS):
                    axis.hlines(values[metric], m - width / 2, m + 0.8 - width / 2, colors="black",
                                linestyles=["--", ":", "-."][j], linewidth=1, label=name if m == 0 else None)
            axis.set_xticks([m + 0.4 - width / 2 for m in range(len(PAPER_METRICS))], list(PAPER_METRICS.values()))
            axis.set_ylim(0, 1)
            axis.set_title("free-text answers (paper metrics)")
        else:
            names = list(choice["conditions"])
            axis.bar(names, [choice["conditions"][n]["accuracy"] for n in names],
                     color=[colours[i % len(colours)] for i in range(len(names))])
            axis.axhline(choice["chance"], color="grey", linestyle="-", linewidth=1, label="chance")
            for j, (name, value) in enumerate(PUBLISHED_CHOICE.items()):
                axis.axhline(value, color="black", linestyle=["--", ":"][j], linewidth=1, label=name)
            axis.set_ylim(0, 1)
            axis.set_title("multiple choice (accuracy)")
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    figure.suptitle(title)
    figure.tight_layout()
    temporary = path.with_name(path.name + ".partial.png")
    figure.savefig(temporary, dpi=110)
    temporary.replace(path)


def render_report(config: EvalReportConfig) -> EvalReport:
    folder = Path(config.folder)
    if not folder.is_dir():
        raise MullamaError(f"{folder} is not a folder; give the folder of `mullama eval score` / `eval choice`")
    scores, choice = _read(folder / "scores.json"), _read(folder / "choice.json")
    if scores is None and choice is None:
        raise MullamaError(f"{folder} holds neither scores.json nor choice.json; run `mullama eval score` or "
                           "`mullama eval choice` first")
    out = Path(config.out) if config.out else folder
    try:
        out.mkdir(parents=True, exist_ok=True)
        document = {"title": config.title, "headline": headline(scores, choice), "scores": scores,
                    "choice": choice, "published": {"question_answering": PUBLISHED_QA,
                                                    "multiple_choice": PUBLISHED_CHOICE}}
        write_atomic(out / "report.json", json.dumps(document, indent=1, ensure_ascii=False).encode())
        write_atomic(out / "report.md", markdown(config.title, scores, choice).encode())
        chart(out / "report.png", config.title, scores, choice)
    except OSError as exc:
        raise MullamaError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    written = [out / "report.md", out / "report.json", out / "report.png"]
    return EvalReport(out, written, headline(scores, choice))
