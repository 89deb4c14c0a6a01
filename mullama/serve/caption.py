"""`mullama caption`: a caption for every clip of a store (or a list), batched, resumable, local or on Ray.

Clips are sorted by how many stacks they are answered from (so batches hold like with like) and cut into
partitions of `--partition-size` clips. A partition is the unit of work: captioned in batches, each batch
seeded from (seed, partition, batch), and written whole as a part file beside the output. A resumed run
skips finished parts, and a Ray run hands partitions to model replicas, so every way of running writes the
same captions. When every part is there, they are merged in the clips' order into the output, written
atomically; then the part files are removed and the plan, marked complete, stays in OUT.parts/ so that a
rerun with other settings or clips is refused rather than mistaken for finished work.

OUT may be a local path or an object-store URL (s3://bucket/key): the same code writes both through
`ObjectFolder`. A part is one object put whole (a temp file renamed on a local disk), resuming lists them,
and the output is put once at the end, so an object store's lack of append and rename costs nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from mullama.errors import MullamaError
from mullama.knn.build import check_text_index, index_after_caption
from mullama.model.checkpoint import read_manifest
from mullama.model.identity import check_encoder
from mullama.model.music_llama import MusicLlama
from mullama.objectstore import ObjectFolder, read_file, split_url
from mullama.outputs import refuse_output_over_inputs
from mullama.serve.config import CaptionConfig
from mullama.serve.partitions import CaptionPlan, caption_partition, part_key, write_part
from mullama.store.feature_store import FeatureStore
from mullama.store.stacks import ClipStacks

PLAN_FILE = "plan.json"


@dataclass
class CaptionReport:
    out: str
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


def parts_folder(out: str) -> ObjectFolder:
    """OUT.parts/ beside the output: the plan and the finished partitions."""
    return ObjectFolder(out.rstrip("/") + ".parts")


def read_clip_list(path: str) -> list[str]:
    try:
        text = read_file(path).decode()
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


def open_parts(parts: ObjectFolder, plan: CaptionPlan, output: ObjectFolder, name: str, overwrite: bool) -> bool:
    """Create the parts folder for `plan`, or check that the one there records the same plan; return whether
    that run is complete. An output that no plan accounts for is never overwritten without --overwrite."""
    if overwrite:
        parts.remove("")
    if parts.exists(PLAN_FILE):
        try:
            recorded = json.loads(parts.read_bytes(PLAN_FILE))
        except ValueError:
            recorded = {}
        if recorded.get("digest") != plan.digest():
            raise MullamaError(f"{output.url_of(name)} was (or is being) written with other settings or clips; give "
                               "another --out, or --overwrite to caption again")
        return bool(recorded.get("complete")) and output.is_file(name)
    if output.exists(name) and not overwrite:
        raise MullamaError(f"--out {output.url_of(name)} already exists and is not a caption run's output; give "
                           "another --out, or --overwrite to replace it")
    write_plan(parts, plan, complete=False)
    return False


def write_plan(parts: ObjectFolder, plan: CaptionPlan, complete: bool) -> None:
    document = {"digest": plan.digest(), "complete": complete, "settings": plan.settings}
    parts.write_atomic(PLAN_FILE, json.dumps(document, indent=1).encode())


def committed_parts(parts: ObjectFolder, plan: CaptionPlan) -> list[int]:
    """The partitions whose part is there (written whole: a killed writer leaves at most a hidden temp file)."""
    names = set(parts.list(""))
    return [number for number in range(len(plan.partitions)) if part_key(number) in names]


def merge_parts(parts: ObjectFolder, plan: CaptionPlan, output: ObjectFolder, name: str,
                failed: Iterable[str]) -> None:
    """Write the output in the clips' order from every part, atomically; then mark the run complete in the plan
    (kept beside the output, so a rerun with other settings is refused) and remove the parts."""
    keys = [part_key(number) for number in committed_parts(parts, plan)]
    rows: dict[str, dict[str, Any]] = {}
    for data in parts.read_many(keys).values():
        for line in data.decode().splitlines():
            row = json.loads(line)
            rows[row["clip_id"]] = row
    missing = set(failed)
    lost = [clip for clip in plan.order if clip not in rows and clip not in missing]
    if lost:  # only another run at once on an object store (no lock there) can take parts away
        raise MullamaError(f"parts holding {len(lost)} clips left {parts.url} while this run wrote; another "
                           f"`mullama caption` with the same --out finished first; run the same command again")
    output.write_atomic(name, "".join(json.dumps(rows[c], ensure_ascii=False) + "\n" for c in plan.order
                                      if c not in missing).encode())
    if not missing:
        write_plan(parts, plan, complete=True)
        parts.remove_files(keys)


def caption_output(out: str, index: str) -> tuple[ObjectFolder, str]:
    """The folder that takes `out` and its name there, checked writable before any work."""
    if index and "://" in out:
        raise MullamaError(f"--index adds the captions to a text index from a local file; give a local --out, or "
                           f"index {out} after downloading it (`mullama index build --captions`)")
    folder, name = split_url(out)
    output = ObjectFolder(folder)
    if output.exists(name) and not output.is_file(name):
        raise MullamaError(f"--out {out} is a folder; give the captions file to write")
    output.check_writable("--out")
    return output, name


def run_caption(config: CaptionConfig) -> CaptionReport:
    out = config.out
    refuse_output_over_inputs(out, {"--store": config.store, "--clips": config.clips, "--adapter": config.adapter,
                                    "--llama": config.llama}, urls=True)
    output, name = caption_output(out, config.index)
    store = FeatureStore.open(config.store)
    check_encoder(read_manifest(config.adapter).encoder, store.encoder)  # before anything is written
    if config.index:
        check_text_index(store, config.index)
    plan, unknown = make_plan(config, store)
    parts = parts_folder(out)
    report = CaptionReport(out, len(plan.order), unknown=unknown)
    with output.held(f".{name}.lock", "captions folder", f"another `mullama caption` is writing {out}; wait for "
                                                         "it to finish"):
        if open_parts(parts, plan, output, name, config.overwrite):
            report.note = "already complete (give --overwrite to caption again)"
            report.resumed = len(plan.order)
            return report
        done = set(committed_parts(parts, plan))
        todo = [n for n in range(len(plan.partitions)) if n not in done]
        report.resumed = sum(len(plan.partitions[n]) for n in done)
        started = time.perf_counter()
        if todo and config.ray:
            from mullama.serve.ray_caption import caption_on_ray  # only for --ray: importing ray takes about 3 s

            report.failed = caption_on_ray(config, plan, todo, parts)
        elif todo:
            caption_locally(config, store, plan, todo, parts)
        report.captioned_now = sum(len(plan.partitions[n]) for n in todo) - len(report.failed)
        report.seconds = time.perf_counter() - started
        merge_parts(parts, plan, output, name, report.failed)
    if config.index:
        built = index_after_caption(config.store, config.index, str(out), config.progress)
        report.indexed, report.index_exit_code = built.lines(), built.exit_code
    return report


def caption_locally(config: CaptionConfig, store: FeatureStore, plan: CaptionPlan, todo: list[int],
                    parts: ObjectFolder) -> None:
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device,
                            encoder=store.encoder)
    bar = tqdm(total=sum(len(plan.partitions[n]) for n in todo), unit="clip", desc="caption",
               disable=not config.progress, dynamic_ncols=True)
    with bar:
        for number in todo:
            write_part(parts, number, caption_partition(model, store, plan.partitions[number], number,
                                                         plan.settings, bar.update))
