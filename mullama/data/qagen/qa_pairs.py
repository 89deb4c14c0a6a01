"""`mullama qa generate`: MusicQA-style pairs for every clip of a source, resumable, with a failure log.

OUT/qa.jsonl holds one line per finished clip (its 4 description and 5 open pairs, where its audio comes
from, and how many attempts each request took); OUT/failures.jsonl one line per clip whose request still
failed after --max-attempts, with the reason and the last output, or whose source row is unusable (request
"source", recorded without asking). Lines are strict JSON, appended whole and fsynced; a
killed run leaves at most a torn last line, dropped on resume, so no clip is done twice. OUT/settings.json
records what the results depend on, and a rerun with other settings is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from mullama.config import validate
from mullama.data.qagen import backends
from mullama.data.qagen.ask import ask_batch, clip_row, pair_dicts
from mullama.data.qagen.backends import check_llm_folder
from mullama.data.qagen.config import QaGenerateConfig
from mullama.data.qagen.instructions import Bounds
from mullama.data.qagen.ray_generate import ask_on_ray
from mullama.data.qagen.sources import SourceClip, read_source
from mullama.data.qagen.template import template_pairs
from mullama.durable import append_lines, owned_folder, write_atomic
from mullama.errors import MullamaError
from mullama.outputs import refuse_output_over_inputs

QA_FILE, FAILURES_FILE, SETTINGS_FILE = "qa.jsonl", "failures.jsonl", "settings.json"
TEMPLATE = "template"


@dataclass
class QaPairsReport:
    generated: int = 0
    resumed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    out: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        rate = f" ({self.generated / self.seconds:.2f} clips/s)" if self.seconds and self.generated else ""
        lines = [f"qa generate: {self.generated} clips done now{rate}, {self.resumed} from an earlier run, "
                 f"{len(self.failed)} failed -> {self.out}"]
        lines += [f"  failed {row['clip_id']}: {row['reason']}" for row in self.failed[:10]]
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more in {FAILURES_FILE}")
        return lines


class ClipLines:
    """An append-only JSON-lines file of per-clip rows (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists() and not path.is_file():
            raise MullamaError(f"{path} is not a file")
        if path.is_file():
            torn = False
            for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
                try:
                    row = json.loads(line)
                    self.rows[str(row["clip_id"])] = row
                except (ValueError, KeyError, TypeError):
                    torn = torn or bool(line.strip())
                if not line.endswith("\n"):
                    torn = True
            if torn:  # a killed run's last line: rewrite without it
                write_atomic(path, b"".join(_line(row) for row in self.rows.values()))

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        append_lines(self.path, b"".join(_line(row) for row in rows), "QA rows")
        self.rows.update((str(row["clip_id"]), row) for row in rows)


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def source_failure(clip: SourceClip) -> dict[str, Any]:
    """The failure row of a clip whose source row is unusable (SourceClip.problem)."""
    return {"clip_id": clip.clip_id, "request": "source", "reason": f"source: {clip.problem}", "last_output": ""}


def template_rows(clips: Iterable[SourceClip]) -> list[dict[str, Any]]:
    rows = []
    for clip in clips:
        description, opened = template_pairs(clip)
        rows.append(clip_row(clip, {"description": pair_dicts(description), "open": pair_dicts(opened)},
                             {"description": 0, "open": 0}))
    return rows


def _settings(config: QaGenerateConfig, generator: str) -> dict[str, Any]:
    return {"source": str(Path(config.source).resolve()), "generator": generator, "seed": config.seed,
            "max_attempts": config.max_attempts, "max_new_tokens": config.max_new_tokens,
            "min_words": config.min_words, "max_words": config.max_words,
            "batch_size": config.batch_size if generator != TEMPLATE else 0}


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if overwrite:
        for name in (QA_FILE, FAILURES_FILE, SETTINGS_FILE):
            (out / name).unlink(missing_ok=True)
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if earlier != settings:
            names = [k for k in settings if not isinstance(earlier, dict) or earlier.get(k) != settings[k]]
            raise MullamaError(f"{out} holds results made with other settings ({', '.join(names) or 'unreadable'}); "
                               "give another --out, or --overwrite to start again")
    else:
        write_atomic(path, json.dumps(settings, indent=1).encode())


def write_qa_pairs(config: QaGenerateConfig, make_backend: Callable[..., Any] | None = None) -> QaPairsReport:
    """Generate, resume or complete OUT; `make_backend` replaces the LLM (tests script one)."""
    validate(config)
    if config.min_words > config.max_words:
        raise MullamaError(f"--min-words {config.min_words} is over --max-words {config.max_words}")
    llm_folder = "" if config.llm == TEMPLATE or config.llm.startswith(("http://", "https://")) else config.llm
    refuse_output_over_inputs(config.out, {"SOURCE": config.source, "--llm": llm_folder})
    clips = read_source(config.source)
    clips = clips[:config.limit] if config.limit else clips
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MullamaError(f"--out {out} is a file; give a folder")
    template = config.llm == TEMPLATE
    if config.ray and (template or config.llm.startswith(("http://", "https://"))):
        raise MullamaError("--ray spreads a local model folder over a cluster; an endpoint or 'template' needs none")
    report = QaPairsReport(out=str(out))
    with owned_folder(out, ".qa.lock", "QA folder", f"another `mullama qa generate` is writing {out}; wait for it"):
        backend = None if template or config.ray else (make_backend or _backend)(config)
        if config.ray:
            check_llm_folder(config.llm)
        generator = TEMPLATE if template else Path(config.llm).resolve().name if config.ray else backend.name
        _check_settings(out, _settings(config, generator), config.overwrite)
        done, failed = ClipLines(out / QA_FILE), ClipLines(out / FAILURES_FILE)
        skip = set(done.rows) | (set() if config.retry_failed else set(failed.rows))
        todo = [clip for clip in clips if clip.clip_id not in skip]
        report.resumed = len([clip for clip in clips if clip.clip_id in done.rows])
        unusable = [source_failure(clip) for clip in todo if clip.problem]
        failed.append([row for row in unusable if failed.rows.get(row["clip_id"]) != row])
        report.failed += unusable
        todo = [clip for clip in todo if not clip.problem]
        started = time.monotonic()
        bar = tqdm(total=len(todo), unit="clip", desc="qa generate", disable=not config.progress, dynamic_ncols=True)
        bounds = Bounds(config.min_words, config.max_words)
        for rows, failures in _results(config, todo, backend, bounds):
            done.append(rows)
            failed.append(failures)
            if config.retry_failed and rows:  # a clip that succeeds now leaves the failure log
                succeeded = {row["clip_id"] for row in rows}
                failed.rows = {clip_id: row for clip_id, row in failed.rows.items() if clip_id not in succeeded}
                write_atomic(failed.path, b"".join(_line(row) for row in failed.rows.values()))
            report.generated += len(rows)
            report.failed += failures
            bar.update(len(rows) + len(failures))
        bar.close()
        report.seconds = time.monotonic() - started
    return report


def _results(config: QaGenerateConfig, todo: list[SourceClip], backend: Any,
             bounds: Bounds) -> Iterable[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(rows, failures) batch by batch, as they are made: each is written before the next is asked for."""
    if config.llm == TEMPLATE:
        yield template_rows(todo), []
    elif config.ray:
        yield from ask_on_ray(config, todo, bounds)
    else:
        for start in range(0, len(todo), config.batch_size):
            yield ask_batch(backend.complete, todo[start:start + config.batch_size], config.seed,
                            config.max_attempts, bounds)


def _backend(config: QaGenerateConfig) -> Any:
    return backends.make_backend(config.llm, config.llm_model, config.api_key, config.max_new_tokens,
                                 config.concurrency, config.device, config.dtype)
