"""`mullama caption`: a caption for every clip of a store (or a list), batched, resumable, local or on Ray.

Clips are sorted by how many stacks they are answered from (so batches hold like with like) and cut into
partitions of `--partition-size` clips. A partition is the unit of work: captioned in batches, each batch
seeded from (seed, partition, batch), and written whole as a part file beside the output. A resumed run
skips finished parts, and a Ray run hands partitions to model replicas, so every way of running writes the
same captions. When every part is there, they are merged in the clips' order into the output, written
atomically; then the part files are removed and the plan, marked complete, stays in OUT.parts/ so that a
rerun with other settings or clips is refused rather than mistaken for finished work.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from mullama.durable import owned_folder, write_atomic
from mullama.errors import MullamaError
from mullama.knn.build import check_text_index, index_after_caption
from mullama.model.checkpoint import read_manifest
from mullama.model.identity import check_encoder
from mullama.model.music_llama import MusicLlama
from mullama.outputs import refuse_output_over_inputs
from mullama.serve.config import CaptionConfig
from mullama.serve.partitions import CaptionPlan, caption_partition, part_path, write_part
from mullama.store.feature_store import FeatureStore
from mullama.store.stacks import ClipStacks

PLAN_FILE = "plan.json"


@dataclass
class CaptionReport:
    out: Path
    clips: int
    captioned_now: int = 0
    resumed: int = 0
    seconds: float = 0.0
    unknown: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    note: str = ""
    indexed: list[str] = field(default_factory=list)  # --index: the text index update's report
    index_exit_code: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.unknown or self.failed or self.index_exit_code else 0

    def lines(self) -> list[str]:
        lines = [f"captions: {self.out} ({self.clips} clips)"]
        if self.note:
            lines.append(f"  {self.note}")
        rate = f" ({self.captioned_now / self.seconds:.2f} clips/s)" if self.captioned_now and self.seconds else ""
        lines.append(f"  captioned now: {self.captioned_now} in {self.seconds:.1f} s{rate}; from an earlier run: "
                     f"{self.resumed}")
        if self.unknown:
            lines.append(f"  {len(self.unknown)} ids of --clips are not stored clips: {', '.join(self.unknown[:5])}"
                         + (" ..." if len(self.unknown) > 5 else ""))
        if self.failed:
            lines.append(f"  {len(self.failed)} clips failed on every attempt: {', '.join(self.failed[:5])}")
        return lines + self.indexed


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def read_clip_list(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MullamaError(f"cannot read --clips {path}: {getattr(exc, 'strerror', None) or exc}") from None
    ids = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not ids:
        raise MullamaError(f"--clips file {path} holds no clip ids; write one per line")
    return ids


def make_plan(config: CaptionConfig, store: FeatureStore) -> tuple[CaptionPlan, list[str]]:
    """The plan, and the ids of --clips that are not stored clips."""
    wanted = read_clip_list(config.clips) if config.clips else sorted(store.clip_ids())
    order = [clip for clip in wanted if clip in store]
    unknown = [clip for clip in wanted if clip not in store]
    if not order:
        raise MullamaError(f"nothing to caption: store {config.store} has no clip" +
                           (f" of --clips {config.clips}" if config.clips else "; extract some first"))
    stacks = ClipStacks(store, config.protocol)
    by_length = sorted(order, key=lambda clip: (len(stacks.window_numbers(clip)), clip))
    partitions = [by_length[i:i + config.partition_size] for i in range(0, len(by_length), config.partition_size)]
    settings = {"store": store.location.url, "adapter": str(Path(config.adapter).resolve()),
                "question": config.question, "protocol": config.protocol, "temperature": config.temperature,
                "top_p": config.top_p, "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size,
                "partition_size": config.partition_size, "seed": config.seed, "dtype": config.dtype}
    return CaptionPlan(settings, order, partitions), unknown


def open_parts(folder: Path, plan: CaptionPlan, out: Path, overwrite: bool) -> bool:
    """Create the parts folder for `plan`, or check that the one there records the same plan; return whether
    that run is complete. An output that no plan accounts for is never overwritten without --overwrite."""
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    plan_path = folder / PLAN_FILE
    if plan_path.is_file():
        try:
            recorded = json.loads(plan_path.read_text())
        except ValueError:
            recorded = {}
        if recorded.get("digest") != plan.digest():
            raise MullamaError(f"{out} was (or is being) written with other settings or clips; give another --out, "
                               "or --overwrite to caption again")
        return bool(recorded.get("complete")) and out.is_file()
    if out.exists() and not overwrite:
        raise MullamaError(f"--out {out} already exists and is not a caption run's output; give another --out, or "
                           "--overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    write_plan(folder, plan, complete=False)
    return False


def write_plan(folder: Path, plan: CaptionPlan, complete: bool) -> None:
    document = {"digest": plan.digest(), "complete": complete, "settings": plan.settings}
    write_atomic(folder / PLAN_FILE, json.dumps(document, indent=1).encode())


def merge_parts(folder: Path, plan: CaptionPlan, out: Path, failed: Iterable[str]) -> None:
    """Write the output in the clips' order from every part, atomically; then mark the run complete in the plan
    (kept beside the output, so a rerun with other settings is refused) and remove the parts."""
    rows: dict[str, dict[str, Any]] = {}
    for number in range(len(plan.partitions)):
        path = part_path(folder, number)
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                rows[row["clip_id"]] = row
    missing = set(failed)
    write_atomic(out, "".join(json.dumps(rows[c], ensure_ascii=False) + "\n" for c in plan.order
                              if c in rows and c not in missing).encode())
    if not missing:
        write_plan(folder, plan, complete=True)
        for number in range(len(plan.partitions)):
            part_path(folder, number).unlink(missing_ok=True)


def run_caption(config: CaptionConfig) -> CaptionReport:
    out = Path(config.out)
    refuse_output_over_inputs(out, {"--store": config.store, "--clips": config.clips, "--adapter": config.adapter,
                                    "--llama": config.llama})
    if out.is_dir():
        raise MullamaError(f"--out {out} is a folder; give the captions file to write")
    store = FeatureStore.open(config.store)
    check_encoder(read_manifest(config.adapter).encoder, store.encoder)  # before anything is written
    if config.index:
        check_text_index(store, config.index)
    plan, unknown = make_plan(config, store)
    folder = parts_folder(out)
    report = CaptionReport(out, len(plan.order), unknown=unknown)
    with owned_folder(out.parent, f".{out.name}.lock", "captions folder",
                      f"another `mullama caption` is writing {out}; wait for it to finish"):
        if open_parts(folder, plan, out, config.overwrite):
            report.note = "already complete (give --overwrite to caption again)"
            report.resumed = len(plan.order)
            return report
        todo = [n for n in range(len(plan.partitions)) if not part_path(folder, n).is_file()]
        report.resumed = sum(len(plan.partitions[n]) for n in range(len(plan.partitions)) if n not in todo)
        started = time.perf_counter()
        if todo and config.ray:
            from mullama.serve.ray_caption import caption_on_ray  # only for --ray: importing ray takes about 3 s

            report.failed = caption_on_ray(config, plan, todo, folder)
        elif todo:
            caption_locally(config, store, plan, todo, folder)
        report.captioned_now = sum(len(plan.partitions[n]) for n in todo) - len(report.failed)
        report.seconds = time.perf_counter() - started
        merge_parts(folder, plan, out, report.failed)
    if config.index:
        built = index_after_caption(config.store, config.index, str(out), config.progress)
        report.indexed, report.index_exit_code = built.lines(), built.exit_code
    return report


def caption_locally(config: CaptionConfig, store: FeatureStore, plan: CaptionPlan, todo: list[int],
                    folder: Path) -> None:
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device,
                            encoder=store.encoder)
    bar = tqdm(total=sum(len(plan.partitions[n]) for n in todo), unit="clip", desc="caption",
               disable=not config.progress, dynamic_ncols=True)
    with bar:
        for number in todo:
            write_part(folder, number, caption_partition(model, store, plan.partitions[number], number,
                                                         plan.settings, bar.update))
