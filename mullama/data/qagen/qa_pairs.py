"""`mullama qa generate`: MusicQA-style pairs for every clip of a source, resumable, with a failure log.

OUT/qa.jsonl holds one line per finished clip (its 4 description and 5 open pairs, where its audio comes
from, and how many attempts each request took); OUT/failures.jsonl one line per clip whose request still
failed after --max-attempts, with the reason and the last output, or whose source row is unusable (request
"source", recorded without asking). Lines are strict JSON, in the source's order. OUT/settings.json records
what the results depend on, and a rerun with other settings is refused.

OUT is a local folder or an object-store URL (s3://bucket/prefix), written by one code path (`ObjectFolder`).
While a run works, each finished batch is committed whole as its own part (OUT/qa.jsonl.parts/,
OUT/failures.jsonl.parts/: a temp file renamed, or one object PUT; object stores have no append), under a
name no other run uses; a killed run's rerun reads the parts and asks only for the clips not in them. At
the end the files are put whole from everything committed, and then the parts read are removed: a kill
between the two leaves rows that are read once again, never twice.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable

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
from mullama.errors import MullamaError
from mullama.objectstore import ObjectFolder
from mullama.outputs import refuse_output_over_inputs

QA_FILE, FAILURES_FILE, SETTINGS_FILE = "qa.jsonl", "failures.jsonl", "settings.json"
PART_PREFIX = "part-"
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
    """The per-clip rows of one JSON-lines file of OUT: the file an earlier run put, then the parts committed
    since, in commit order (a later row of a clip replaces an earlier one). See the module docstring."""

    def __init__(self, folder: ObjectFolder, name: str):
        self.folder, self.name, self.parts = folder, name, f"{name}.parts"
        if folder.exists(name) and not folder.is_file(name):
            raise MullamaError(f"{folder.url_of(name)} is not a file")
        self.rows = self._committed()[0]
        self.run = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.appended = 0

    def _committed(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The rows committed so far (the file, then every part in commit order), and the parts' keys."""
        try:
            rows = _rows(self.folder.read_bytes(self.name))
        except FileNotFoundError:
            rows = {}
        # part names start with the time of the run that wrote them, so sorted is committed order
        keys = [f"{self.parts}/{part}" for part in self.folder.list(self.parts)
                if part.startswith(PART_PREFIX) and part.endswith(".jsonl")]
        for data in self.folder.read_many(keys).values():
            rows.update(_rows(data))
        return rows, keys

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Commit `rows` as one part, whole or not at all."""
        if not rows:
            return
        key = f"{self.parts}/{self.run}-{self.appended:06d}.jsonl"
        self.folder.write_atomic(key, b"".join(_line(row) for row in rows))
        self.appended += 1
        self.rows.update((str(row["clip_id"]), row) for row in rows)

    def finish(self, order: list[str], leave_out: Collection[str] = ()) -> None:
        """Put the file whole from everything committed by now (read again: on an object store, which has no
        lock, another run may have finished meanwhile), rows in `order` (clips outside it after, as they
        were) and those of `leave_out` dropped; then remove the parts it was made from."""
        rows, keys = self._committed()
        rank = {clip: number for number, clip in enumerate(order)}
        kept = sorted(((clip, row) for clip, row in rows.items() if clip not in leave_out),
                      key=lambda item: rank.get(item[0], len(rank)))
        self.folder.write_atomic(self.name, b"".join(_line(row) for _, row in kept))
        self.folder.remove_files(keys)


def _rows(data: bytes) -> dict[str, dict[str, Any]]:
    """clip id -> row of JSON lines; a torn line (a killed writer of an earlier version's append) is dropped."""
    rows = {}
    for line in data.decode("utf-8").splitlines():
        try:
            row = json.loads(line)
            rows[str(row["clip_id"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return rows


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
    source = config.source if "://" in config.source else str(Path(config.source).resolve())
    return {"source": source, "generator": generator, "seed": config.seed,
            "max_attempts": config.max_attempts, "max_new_tokens": config.max_new_tokens,
            "min_words": config.min_words, "max_words": config.max_words,
            "batch_size": config.batch_size if generator != TEMPLATE else 0}


def _check_settings(out: ObjectFolder, settings: dict[str, Any], overwrite: bool) -> None:
    if overwrite:
        for name in (QA_FILE, FAILURES_FILE, f"{QA_FILE}.parts", f"{FAILURES_FILE}.parts", SETTINGS_FILE):
            out.remove(name)
    if out.exists(SETTINGS_FILE):
        try:
            earlier = json.loads(out.read_bytes(SETTINGS_FILE))
        except ValueError:
            earlier = None
        if earlier != settings:
            names = [k for k in settings if not isinstance(earlier, dict) or earlier.get(k) != settings[k]]
            raise MullamaError(f"{out.url} holds results made with other settings ({', '.join(names) or 'unreadable'}"
                               "); give another --out, or --overwrite to start again")
    else:
        out.write_atomic(SETTINGS_FILE, json.dumps(settings, indent=1).encode())


def write_qa_pairs(config: QaGenerateConfig, make_backend: Callable[..., Any] | None = None) -> QaPairsReport:
    """Generate, resume or complete OUT; `make_backend` replaces the LLM (tests script one)."""
    validate(config)
    if config.min_words > config.max_words:
        raise MullamaError(f"--min-words {config.min_words} is over --max-words {config.max_words}")
    llm_folder = "" if config.llm == TEMPLATE or config.llm.startswith(("http://", "https://")) else config.llm
    refuse_output_over_inputs(config.out, {"SOURCE": config.source, "--llm": llm_folder}, urls=True)
    every_clip = read_source(config.source)
    clips = every_clip[:config.limit] if config.limit else every_clip
    out = ObjectFolder(config.out)
    if out.is_file():
        raise MullamaError(f"--out {config.out} is a file; give a folder")
    template = config.llm == TEMPLATE
    if config.ray and (template or config.llm.startswith(("http://", "https://"))):
        raise MullamaError("--ray spreads a local model folder over a cluster; an endpoint or 'template' needs none")
    out.check_writable("--out")  # an unreachable or missing bucket: one line, before a model loads
    report = QaPairsReport(out=config.out)
    with out.held(".qa.lock", "QA folder", f"another `mullama qa generate` is writing {config.out}; wait for it"):
        backend = None if template or config.ray else (make_backend or _backend)(config)
        if config.ray:
            check_llm_folder(config.llm)
        generator = TEMPLATE if template else Path(config.llm).resolve().name if config.ray else backend.name
        _check_settings(out, _settings(config, generator), config.overwrite)
        done, failed = ClipLines(out, QA_FILE), ClipLines(out, FAILURES_FILE)
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
            report.generated += len(rows)
            report.failed += failures
            bar.update(len(rows) + len(failures))
        bar.close()
        report.seconds = time.monotonic() - started
        order = [clip.clip_id for clip in every_clip]
        done.finish(order)
        failed.finish(order, leave_out=set(done.rows))  # a clip that succeeded on --retry-failed leaves the log
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
