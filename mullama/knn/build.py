"""`mullama index build`: embed the store's committed partitions, train once, encode, merge, tune, commit.

One code path for both runners: the clips to add (of new partitions; for a text index also clips whose
captions changed) are cut into segments, and `encode_segment` embeds a segment's clips, writes its vectors
and catalog, and encodes them into a copy of the trained empty index. Locally one segment holds everything;
on Ray each task encodes its own segment in parallel (the way autofaiss and clip-retrieval scale to billions
of vectors), and the driver merges the encoded copies in partition order, so a Ray build holds exactly the
rows, codes and order of a local one.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from mullama.config import validate
from mullama.durable import owned_folder
from mullama.errors import MullamaError
from mullama.knn.captions import CaptionSet, read_captions
from mullama.knn.choice import IndexChoice, candidate_indexes, check_factory, make_index, reaching_advice
from mullama.knn.clip_index import RowVectors, Searcher
from mullama.knn.config import IndexBuildConfig
from mullama.knn.families import describe
from mullama.knn.files import INDEXES, IndexFolder, IndexMetadata, Segment, new_generation, now
from mullama.knn.index_family import IndexLayout
from mullama.knn.recipes import DEFAULT_RECIPE, Recipe, parse_recipe, text_recipe
from mullama.knn.segment import embed_rows, encode_segment, indexed_records
from mullama.knn.text_model import text_model_identity
from mullama.knn.tuning import recall_at, tune, tuning_queries
from mullama.outputs import refuse_output_over_inputs
from mullama.store.feature_store import FeatureStore
from mullama.store.schema import ClipRecord

LOCK = ".lock"


@dataclass
class BuildReport:
    url: str
    rows: int
    added: int
    partitions: int
    factory: str
    reason: str
    recipe: str
    search: dict[str, Any]
    seconds: float
    resident_mb: float
    notes: list[str] = field(default_factory=list)
    exit_code: int = 0
    refusal: str = ""  # why nothing was committed (exit code 1)

    def lines(self) -> list[str]:
        if self.refusal:
            return [f"{self.url}: {self.refusal}"]
        if not self.added and self.notes and self.notes[0].startswith("up to date"):
            return [f"{self.url}: {self.notes[0]}"]
        tuned = ""
        knob = describe(self.factory).knob
        if knob is not None and "recall_at_10" in self.search:
            tuned = (f"; {knob.label} {self.search[knob.key]}, shortlist {self.search['shortlist']}x: "
                     f"recall@10 {self.search['recall_at_10']:.3f}")
        return [f"indexed {self.added} clips from {self.partitions} partitions into {self.url} "
                f"({self.rows} rows in all) in {self.seconds:.1f} s",
                f"  index {self.factory} ({self.reason}); recipe {self.recipe}; about {self.resident_mb:.1f} MB in "
                f"RAM{tuned}", *(f"  note: {note}" for note in self.notes)]


def empty_copy(index: faiss.Index) -> bytes:
    copy = faiss.clone_index(index)
    copy.reset()  # IVF: keeps the trained quantiser and codec, drops the lists
    return faiss.serialize_index(copy).tobytes()


def merge(layout: IndexLayout, index: faiss.Index, encoded: bytes | None, vectors: np.ndarray) -> None:
    if encoded is None:
        index.add(np.asarray(vectors, dtype=np.float32))
        return
    layout.family.merge(index, faiss.deserialize_index(np.frombuffer(encoded, dtype=np.uint8)))


# --------------------------------------------------------------------- the command
@contextlib.contextmanager
def _writing(folder: IndexFolder) -> Iterator[None]:
    """One build at a time per local index folder (object stores: the last index.json wins)."""
    if not folder.location.is_local:
        yield
        return
    root = Path(folder.location.root)
    existed = root.exists()
    try:
        with owned_folder(root, LOCK, "index folder", f"another build is writing {folder.url}; wait for it to finish"):
            yield
    except BaseException:
        if not existed and [p.name for p in root.iterdir()] == [LOCK]:  # refused before writing: leave no trace
            shutil.rmtree(root, ignore_errors=True)
        raise


def default_folder(store: FeatureStore, config: IndexBuildConfig) -> IndexFolder:
    return IndexFolder(config.out or f"{store.location.url.rstrip('/')}/{INDEXES}/{config.name}")


def check_out(config: IndexBuildConfig) -> None:
    """--out is never an input: not the captions or text model, and not the store itself or inside it, except
    under STORE/indexes/, where the store keeps its indexes."""
    inputs: dict[str, object] = {"--captions": config.captions, "--text-model": config.text_model}
    under_indexes = "://" not in config.store and Path(config.out).resolve().is_relative_to(
        Path(config.store).resolve() / INDEXES)
    if config.out and not under_indexes:
        inputs["STORE"] = config.store
    refuse_output_over_inputs(config.out, inputs)


def build_index(config: IndexBuildConfig) -> BuildReport:
    validate(config)
    check_out(config)
    if config.update and config.overwrite:
        raise MullamaError("--update and --overwrite contradict each other; give one")
    if config.recipe and config.captions:
        raise MullamaError("--recipe embeds stacks, --captions embeds captions: give one of them")
    if config.text_model and not (config.captions or config.update):
        raise MullamaError("--text-model embeds captions: give the captions files with --captions")
    store = FeatureStore.open(config.store)
    if config.captions and not config.update:
        check_factory(config.type, text_model_identity(config.text_model).dim)
    else:
        check_factory(config.type, store.stack_shape[1])
    if config.recipe:
        parse_recipe(config.recipe, store.encoder)
    folder = default_folder(store, config)
    folder.check_writable_path()
    started = time.monotonic()
    with _writing(folder):
        previous = folder.read_metadata() if folder.exists() else None
        if previous is not None and not (config.update or config.overwrite):
            raise MullamaError(f"{folder.url} already holds an index; add --update to add new partitions or "
                               "--overwrite to rebuild it")
        return _build(config, store, folder, previous if config.update else None, previous, started)


def index_after_extract(store: str, name: str, ray: str, progress: bool) -> BuildReport:
    """`mullama extract --index NAME`: add what the extraction committed (a new index the first time)."""
    return build_index(IndexBuildConfig(store=store, name=name, update=True, ray=ray, progress=progress))


def index_after_caption(store: str, name: str, captions: str, progress: bool) -> BuildReport:
    """`mullama caption --index NAME`: add a captions file to the store's text index (a new one the first time)."""
    return build_index(IndexBuildConfig(store=store, name=name, update=True, captions=[captions], progress=progress))


def check_text_index(store: FeatureStore, name: str) -> None:
    """Refuse, before hours of captioning, an index NAME of the store that indexes stacks rather than captions."""
    folder = IndexFolder(f"{store.location.url.rstrip('/')}/{INDEXES}/{name}")
    if folder.exists() and not folder.read_metadata().recipe.is_text:
        raise MullamaError(f"--index {name}: {folder.url} indexes audio stacks, not captions; give another name")


def _check_update(previous: IndexMetadata, store: FeatureStore, config: IndexBuildConfig, folder: IndexFolder) -> None:
    if not store.encoder.same_encoder(previous.encoder) or \
            previous.store.get("created_at") != store.attributes.get("created_at"):
        raise MullamaError(f"{folder.url} was built from another store or encoder; rebuild it with --overwrite")
    if (config.captions or config.text_model) and not previous.recipe.is_text:
        raise MullamaError(f"{folder.url} indexes stacks (recipe {previous.recipe.name}), not captions; give another "
                           "--name for a text index")
    if config.text_model and not previous.recipe.text_model.same_model(text_model_identity(config.text_model)):
        raise MullamaError(f"{folder.url} was built with text model {previous.recipe.text_model.name}, not the one in "
                           f"{config.text_model}; an update keeps the index's model (rebuild with --overwrite)")
    recipe_text = config.recipe
    if recipe_text and not parse_recipe(recipe_text, store.encoder).same_space(previous.recipe):
        raise MullamaError(f"{folder.url} was built with recipe {previous.recipe.name}, not {recipe_text}; an update "
                           "keeps the index's recipe (rebuild with --overwrite to change it)")


def _build(config: IndexBuildConfig, store: FeatureStore, folder: IndexFolder, previous: IndexMetadata | None,
           replaced: IndexMetadata | None, started: float) -> BuildReport:
    """Add the store's unindexed partitions to `previous` (None: a new index), then commit, replacing
    `replaced` (the index there before, if any)."""
    notes: list[str] = []
    if previous is not None:
        _check_update(previous, store, config, folder)
    recipe, captions = _recipe(config, store, previous)
    covered = set(previous.partitions) if previous else set()
    todo = [c.partition for c in store.commits() if c.partition not in covered]
    fresh = indexed_records(store, todo)
    recaptioned: list[int] = []
    if captions is not None:
        fresh, recaptioned = _captioned(store, folder, previous, covered, fresh, captions, notes)
    added = sum(len(records) for records in fresh.values())
    dim = recipe.dimension(store.stack_shape[1])
    if previous is not None and not todo and not added:
        return BuildReport(folder.url, previous.rows, 0, 0, previous.factory, "unchanged", recipe.name,
                           previous.search, time.monotonic() - started, 0.0, [f"up to date ({previous.rows} rows)"])
    if previous is None and added == 0:
        if captions is not None:
            raise MullamaError(f"no clip of store {store.location.url} has a caption in --captions; caption the "
                               "store's clips with `mullama caption` (the files name stored clip ids)")
        raise MullamaError(f"store {store.location.url} has no committed clips to index; run `mullama extract` first")

    masked: list[int] = list(previous.masked_rows) if previous else []
    if previous is not None:
        index = folder.read_index(previous)
        choice = IndexChoice(describe(previous.factory), int(previous.search.get("shortlist", 1)), 0, "kept")
        superseded = _superseded_rows(folder, previous, store)
        if superseded:
            notes.append(f"{len(superseded)} row(s) of re-extracted clips are masked; --overwrite reclaims them")
        masked = sorted(set(masked) | set(superseded) | set(recaptioned))
    else:
        candidates = candidate_indexes(added, dim, config.memory_gb * 1e9, config.type)
        choice = candidates[0]
        records = [r for records in fresh.values() for r in records]
        index = _trained(choice, dim, lambda rows, bar: embed_rows(store, recipe, [records[r] for r in rows],
                                                                   captions and captions.by_clip, bar), added, config)

    generation = new_generation()
    empty = empty_copy(index) if choice.layout.incremental else None
    results = _encode(config, store, folder, recipe, empty, fresh, captions, generation)
    segments = list(previous.segments) if previous else []
    for segment_dict, encoded in results:
        segment = Segment.from_dict(segment_dict)
        vectors_to_add = folder.read_vectors(segment, dim) if encoded is None else np.empty((0, dim))
        merge(choice.layout, index, encoded, vectors_to_add)
        segments.append(segment)

    vectors = RowVectors([folder.read_vectors(segment, dim) for segment in segments])
    target = float(previous.build.get("target_recall", config.target_recall)) if previous else config.target_recall
    if previous is None:
        choice, index, search = _best_candidate(config, candidates, index, vectors)
    else:
        search = _retuned(choice, index, vectors, masked, previous, target, config.seed, notes)
    if search.get("recall_at_10", 1.0) < target:
        below = _below_target(config, choice, search, target, vectors, previous)
        if not config.allow_below_target:
            return BuildReport(folder.url, previous.rows if previous else 0, 0, 0, choice.factory, choice.reason,
                               recipe.name, search, time.monotonic() - started, 0.0, exit_code=1, refusal=below)
        notes.append(below)
    metadata = IndexMetadata(
        name=config.name, store=_store_identity(store), recipe=recipe, dim=dim, factory=choice.factory,
        search=search, build=_build_settings(config, choice, previous), index_file=folder.write_index(index, generation),
        partitions=(previous.partitions if previous else []) + todo, segments=segments, masked_rows=masked,
        created_at=previous.created_at if previous else now(), updated_at=now())
    folder.commit(metadata, replaced)
    return BuildReport(folder.url, metadata.rows - len(masked), added, len(todo), choice.factory, choice.reason,
                       recipe.name, search, time.monotonic() - started,
                       choice.layout.resident_bytes(metadata.rows, dim) / 1e6, notes)


def _superseded_rows(folder: IndexFolder, previous: IndexMetadata, store: FeatureStore) -> list[int]:
    """Rows whose clip now has a newer commit (a retry or a changed source re-extracted)."""
    latest = store.records_by_id()
    rows, row = [], 0
    for segment in previous.segments:
        for clip in folder.read_clips(segment):
            record = latest.get(clip["clip_id"])
            if record is None or record.partition != clip["partition"]:
                rows.append(row)
            row += 1
    return rows


def _trained(choice: IndexChoice, dim: int, sample_of: Callable[[np.ndarray, tqdm], np.ndarray], rows: int,
             config: IndexBuildConfig) -> faiss.Index:
    """The empty index of `choice`, trained on a seeded sample of rows (`sample_of`: rows, bar -> vectors)."""
    index = make_index(choice, dim)
    if choice.layout.trains:
        chosen = np.sort(np.random.default_rng(config.seed).choice(rows, size=min(choice.train_size, rows),
                                                                   replace=False))
        with tqdm(total=len(chosen), unit="clip", desc="index: training sample", disable=not config.progress,
                  dynamic_ncols=True) as bar:
            sample = np.asarray(sample_of(chosen, bar), dtype=np.float32)
        try:
            index.train(sample)
        except RuntimeError as exc:  # e.g. fewer vectors than a forced --type's centroids: faiss's C++ message
            cause = str(exc).strip().splitlines()[-1].split("failed: ")[-1]
            raise MullamaError(f"--type {choice.factory} cannot be trained on these {len(sample)} vectors ({cause}); "
                               "choose fewer lists or codes, or Flat") from None
    return faiss.deserialize_index(faiss.serialize_index(index))  # the class a reader gets (IndexFlat reads back
    # as IndexFlatIP), which merge_from requires of both sides


Settled = tuple[IndexChoice, faiss.Index, dict[str, Any]]


def _recall(settled: Settled) -> float:
    return float(settled[2].get("recall_at_10", 1.0))  # exact search: 1


def _best_candidate(config: IndexBuildConfig, candidates: list[IndexChoice], index: faiss.Index,
                    vectors: RowVectors) -> Settled:
    """The first candidate whose tuned recall reaches the target, each after the first built from the row
    vectors (a new index: row order is the training sample's); the best tried when none does."""
    queries = tuning_queries(vectors, config.seed, set())

    def settled(choice: IndexChoice, index: faiss.Index) -> Settled:
        if choice.exact:
            return choice, index, {"shortlist": choice.shortlist}
        searcher = Searcher(index, choice.layout, vectors, {}, [])
        return choice, index, tune(searcher, queries, choice.shortlist, config.target_recall)

    best = settled(candidates[0], index)
    tried = [best]
    for choice in candidates[1:]:
        if _recall(tried[-1]) >= config.target_recall:
            break
        index = _trained(choice, vectors.dim, lambda rows, bar: vectors.gather(rows), len(vectors), config)
        for _, block in vectors.chunks():
            index.add(block)
        tried.append(settled(choice, index))
        best = tried[-1] if _recall(tried[-1]) > _recall(best) else best
    if len(tried) == 1:
        return best
    summary = [{"factory": c.factory, "shortlist": s["shortlist"], "recall_at_10": _recall((c, i, s))}
               for c, i, s in tried]
    return best[0], best[1], {**best[2], "tried": summary}


def _retuned(choice: IndexChoice, index: faiss.Index, vectors: RowVectors, masked: list[int],
             previous: IndexMetadata, target: float, seed: int, notes: list[str]) -> dict[str, Any]:
    """An update's search settings: the kept ones while the new rows still reach the target with them,
    else tuned again on the new rows (the collection grew or shifted; the codes stay)."""
    search = dict(previous.search)
    knob = choice.layout.knob
    queries = tuning_queries(vectors, seed, set(masked), first_row=previous.rows)
    if knob is None or queries is None or knob.key not in search:
        return search
    searcher = Searcher(index, choice.layout, vectors, search, masked)
    kept = recall_at(searcher, queries, int(search["shortlist"]))
    if kept >= target:
        return search
    notes.append(f"recall@10 with the kept settings fell to {kept:.3f} on the new clips: tuned again")
    return tune(searcher, queries, int(search["shortlist"]), target)


def _below_target(config: IndexBuildConfig, choice: IndexChoice, search: dict[str, Any], target: float,
                  vectors: RowVectors, previous: IndexMetadata | None) -> str:
    """The best recall reached, and what would reach the target (issue 28: say so instead of a quiet note)."""
    knob = choice.layout.knob
    setting = f", {knob.label} {search.get(knob.key)}" if knob else ""
    advice = reaching_advice(len(vectors), vectors.dim, config.memory_gb * 1e9, config.type if previous is None
                             else choice.factory)
    again = "; rebuild with --overwrite and " if previous is not None else "; "
    return (f"recall@10 {search['recall_at_10']:.3f} ({choice.factory}{setting}, shortlist {search['shortlist']}x) "
            f"stays below --target-recall {target} within --memory-gb {config.memory_gb:g}{again}"
            f"{advice} reaches it, or add --allow-below-target to keep this index")


def _encode(config: IndexBuildConfig, store: FeatureStore, folder: IndexFolder, recipe: Recipe,
            empty: bytes | None, fresh: dict[str, list[ClipRecord]], captions: CaptionSet | None,
            generation: str) -> list[tuple[dict[str, Any], bytes | None]]:
    """The segments of the clips in `fresh` (by partition, in commit order)."""
    order = [c.partition for c in store.commits() if fresh.get(c.partition)]
    if not order:
        return []
    if config.ray:
        from mullama.knn.ray_build import encode_on_ray  # only with --ray: importing ray takes about 3 s

        return encode_on_ray(config, store.location.url, folder.url, recipe, empty, order, fresh,
                             captions and captions.by_clip, generation)
    clip_ids = [r.clip_id for p in order for r in fresh[p]]
    with tqdm(total=len(clip_ids), unit="clip", desc="index: encode", disable=not config.progress,
              dynamic_ncols=True) as bar:
        return [encode_segment(store, folder.url, recipe.to_dict(), empty, clip_ids,
                               f"{generation}-0000", _of(captions, clip_ids), bar=bar)]


def _of(captions: CaptionSet | None, clip_ids: list[str]) -> dict[str, list[str]] | None:
    return {clip_id: captions.by_clip[clip_id] for clip_id in clip_ids} if captions is not None else None


def _recipe(config: IndexBuildConfig, store: FeatureStore,
            previous: IndexMetadata | None) -> tuple[Recipe, CaptionSet | None]:
    """The recipe (an update keeps the index's; a text index adds the new caption files to its own) and, for a
    text index, every clip's captions."""
    if previous is not None and not previous.recipe.is_text:
        return previous.recipe, None
    if previous is None and not config.captions:
        return parse_recipe(config.recipe or DEFAULT_RECIPE, store.encoder), None
    paths = [c["path"] for c in previous.recipe.captions] if previous is not None else []
    captions = read_captions(paths + list(config.captions))
    identity = previous.recipe.text_model if previous is not None else text_model_identity(config.text_model)
    return text_recipe(identity, captions.files), captions


def _captioned(store: FeatureStore, folder: IndexFolder, previous: IndexMetadata | None, covered: set[str],
               fresh: dict[str, list[ClipRecord]], captions: CaptionSet,
               notes: list[str]) -> tuple[dict[str, list[ClipRecord]], list[int]]:
    """A text index's clips to embed: those of new partitions with captions, and of indexed partitions those
    captioned since or whose captions changed (their old rows returned, to be masked). Captions of clips the
    store lacks, and clips without captions, are noted, not fatal."""
    current: dict[str, tuple[int, list[str]]] = {}
    row = 0
    for segment in previous.segments if previous is not None else []:
        for clip in folder.read_clips(segment):
            current[clip["clip_id"]] = (row, clip.get("captions", []))
            row += 1
    masked = set(previous.masked_rows) if previous is not None else set()
    kept = {p: [r for r in records if r.clip_id in captions.by_clip] for p, records in fresh.items()}
    stale: list[int] = []
    indexed = [c.partition for c in store.commits() if c.partition in covered]
    for partition, records in indexed_records(store, indexed).items():
        for record in records:
            texts = captions.by_clip.get(record.clip_id)
            known = current.get(record.clip_id)
            if texts is None or (known is not None and known[0] not in masked and known[1] == texts):
                continue
            kept.setdefault(partition, []).append(record)
            if known is not None and known[0] not in masked:
                stale.append(known[0])
    if stale:
        notes.append(f"{len(stale)} clip(s) with new captions embedded again (their old rows are masked)")
    stored = store.records_by_id()
    strangers = [clip_id for clip_id in captions.by_clip if clip_id not in stored]
    if strangers:
        notes.append(f"{len(strangers)} captioned clip(s) are not in the store, skipped: {', '.join(strangers[:10])}"
                     + (" ..." if len(strangers) > 10 else ""))
    silent = sum(1 for records in fresh.values() for r in records if r.clip_id not in captions.by_clip)
    if silent:
        notes.append(f"{silent} clip(s) of the store have no caption and are not indexed")
    return kept, stale


def _store_identity(store: FeatureStore) -> dict[str, Any]:
    return {"url": store.location.url, "created_at": store.attributes.get("created_at"),
            "encoder": store.encoder.to_dict(), "settings": store.effective_settings().__dict__}


def _build_settings(config: IndexBuildConfig, choice: IndexChoice, previous: IndexMetadata | None) -> dict[str, Any]:
    if previous is not None:
        return {**previous.build, "updates": int(previous.build.get("updates", 0)) + 1}
    return {"type_asked": config.type, "memory_gb": config.memory_gb, "train_sample": choice.train_size,
            "seed": config.seed, "target_recall": config.target_recall, "reason": choice.reason,
            "ray": bool(config.ray)}
