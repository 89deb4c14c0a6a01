"""Model arguments by name: a local folder as always, else a Hugging Face Hub id resolved to a cached snapshot.

Every model argument (`--mert`, `--llama`, ..., `MusicLlama.load`) goes through `resolve_model`, so a hub id
(`ORG/NAME`, `ORG/NAME@REVISION`) works wherever a folder does. Only what loading needs is downloaded (configs,
tokenizer files, and the weights in safetensors when the repo has them, else .bin); the repo's Python files never
are, so no remote code can run. The cache is huggingface_hub's own (HF_HOME / HF_HUB_CACHE), as are HF_TOKEN,
HF_HUB_OFFLINE and HF_ENDPOINT, read when a model is resolved (not when this module is imported).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import huggingface_hub
from huggingface_hub import errors as hub_errors
from tqdm import tqdm

from mullama.errors import MullamaError
from mullama.hub_ids import HUB_FILE, HUB_ID, hub_origin, is_hub_id

# Files a loader reads besides the weights: configs (model, generation, processor, tokenizer, sharding index) and
# tokenizer vocabularies (SentencePiece, BPE merges and vocab, tiktoken).
SUPPORT_PATTERNS = ["*.json", "*.model", "*.txt", "*.tiktoken"]
WEIGHT_KINDS = (["*.safetensors"], ["*.bin", "*.pth", "*.pt"])  # first kind the repo has wins


@dataclass(frozen=True)
class ModelSource:
    """Where a model argument's files are, and, for a hub model, which repo and commit they came from."""

    folder: Path
    repo_id: str = ""  # "" for a local folder
    commit: str = ""


def split_hub_id(value: str, revision: str = "") -> tuple[str, str]:
    """(repo id, revision) from ID or ID@REVISION; an explicit `revision` must agree with the @ suffix."""
    match = HUB_ID.fullmatch(value)
    if match is None:
        raise MullamaError(f"{value!r} is not a Hugging Face Hub id; give ORG/NAME, ORG/NAME@REVISION or a folder")
    suffix = match.group("revision") or ""
    if suffix and revision and suffix != revision:
        raise MullamaError(f"{value} names revision {suffix} but --revision says {revision}; give one of them")
    return match.group("repo"), suffix or revision or "main"


def resolve_model(value: str, *, revision: str = "", name: str = "model", progress: bool = False) -> ModelSource:
    """A local folder as it is; a hub id as its cached snapshot, fetching the files that loading needs."""
    if not is_hub_id(value):
        folder = Path(value).expanduser()
        origin = hub_origin(folder)
        return ModelSource(folder, *origin) if origin else ModelSource(folder, "", _local_dir_commit(folder))
    repo_id, revision = split_hub_id(value, revision)
    return fetch(repo_id, revision, name=name, progress=progress)


@contextlib.contextmanager
def resolving_hub_ids(config: Any, ids: dict[str, str]) -> Iterator[None]:
    """Replace each hub id of `config` (field name -> id) by its snapshot folder for the command's run, and name
    the id in any error that names the folder (a ViT given as --mert is refused by the MERT loader's checks)."""
    folders = {}
    for field, value in ids.items():
        flag = "--" + field.replace("_", "-")
        what = f"{flag} {value} (no such path, so on the Hub):"
        if HUB_FILE.fullmatch(value):
            path = resolve_file(value, name=what, progress=sys.stderr.isatty())
        else:
            path = resolve_model(value, name=what, progress=sys.stderr.isatty()).folder
        setattr(config, field, str(path))
        folders[str(path)] = f"{value} ({path})"
    try:
        yield
    except MullamaError as error:
        message = str(error)
        for folder, label in folders.items():
            message = message.replace(folder, label)
        raise MullamaError(message) from None


def fetch(repo_id: str, revision: str = "main", *, to: str | Path | None = None, name: str = "model",
          progress: bool = False) -> ModelSource:
    """Download (or find cached) the loading files of `repo_id` at `revision`, into the cache or folder `to`."""
    what = name if name.endswith(":") else f"{name} {repo_id}@{revision}:"
    with hub_errors_as_one_line(what):
        if offline():
            folder = _cached_snapshot(repo_id, revision, to)
        else:
            patterns = SUPPORT_PATTERNS + weight_patterns(_repo_files(repo_id, revision))
            folder = _download(repo_id, revision, patterns, to, progress)
    if not any(next(folder.rglob(pattern), None) for kind in WEIGHT_KINDS for pattern in kind):
        raise MullamaError(f"{what} the snapshot {folder} holds no weights (an earlier download was interrupted, or "
                           f"the repo has none): run `mullama models fetch {repo_id}@{revision}` with the internet")
    origin = hub_origin(folder)
    return ModelSource(folder, repo_id, origin[1] if origin else _local_dir_commit(folder))


def resolve_file(value: str, *, name: str = "file", progress: bool = False) -> Path:
    """One file of a Hub repo, ORG/NAME[@REV]:PATH (e.g. the released checkpoint.pth), from the cache or fetched."""
    match = HUB_FILE.fullmatch(value)
    if match is None:
        raise MullamaError(f"{name} {value!r} is not ORG/NAME[@REVISION]:PATH")
    repo_id, revision, filename = match.group("repo"), match.group("revision") or "main", match.group("path")
    with hub_errors_as_one_line(name):
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir(),
                                               endpoint=_endpoint(), local_files_only=offline(),
                                               tqdm_class=tqdm if progress else None)
    return Path(path)


def weight_patterns(files: list[str]) -> list[str]:
    """The weights to fetch: safetensors when the repo has any, else the PyTorch pickles."""
    for kind in WEIGHT_KINDS:
        if any(fnmatch.fnmatch(f, p) for f in files for p in kind):
            return kind
    return []


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default (read now, not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _repo_files(repo_id: str, revision: str) -> list[str]:
    api = huggingface_hub.HfApi(endpoint=_endpoint())
    return api.list_repo_files(repo_id, revision=revision)


def _download(repo_id: str, revision: str, patterns: list[str], to: str | Path | None, progress: bool) -> Path:
    """snapshot_download with one bar for all files (plain tqdm: the CLI turns huggingface_hub's own bars off) and
    its retry warnings kept quiet (a failure ends as one line; huggingface_hub retries dropped connections itself)."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                                 cache_dir=cache_dir(), local_dir=to, endpoint=_endpoint(),
                                                 tqdm_class=tqdm if progress else None)
    finally:
        hub_logger.setLevel(level)
    return Path(path)


def _cached_snapshot(repo_id: str, revision: str, to: str | Path | None) -> Path:
    """The snapshot already on disk (HF_HUB_OFFLINE): asking only for the always-fetched support files means a
    snapshot is found whichever weights it holds; the caller then checks that it holds some."""
    path = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=SUPPORT_PATTERNS,
                                             cache_dir=cache_dir(), local_dir=to, local_files_only=True)
    return Path(path)


def _local_dir_commit(folder: Path) -> str:
    """The commit huggingface_hub recorded when it filled a `--to` folder (its download metadata), else ""."""
    for metadata in sorted((folder / ".cache" / "huggingface" / "download").rglob("*.metadata")):
        lines = metadata.read_text().splitlines()
        if lines and re.fullmatch(r"[0-9a-f]{40}", lines[0]):
            return lines[0]
    return ""


@contextlib.contextmanager
def hub_errors_as_one_line(what: str) -> Iterator[None]:
    """Turn huggingface_hub's failures into one MullamaError line naming the model and what to do."""
    try:
        yield
    except MullamaError:
        raise
    except Exception as error:
        message = describe_hub_error(what, error)
        if message is None:
            raise
        raise MullamaError(message) from None


def describe_hub_error(what: str, error: BaseException) -> str | None:
    """One line for a hub failure (None: not a hub failure, let it through)."""
    fetch_hint = "run `mullama models fetch` for it where the internet is, or give a local folder"
    if isinstance(error, hub_errors.GatedRepoError):
        return f"{what} the repo is gated: accept its licence on the Hub, then set HF_TOKEN to a token of that account"
    if isinstance(error, hub_errors.RevisionNotFoundError):
        return f"{what} the repo has no such revision; give a branch, tag or commit it has"
    if isinstance(error, hub_errors.RemoteEntryNotFoundError):
        return f"{what} the repo has no such file at that revision; check the path (after the ':')"
    if isinstance(error, hub_errors.RepositoryNotFoundError):
        return f"{what} no such model on the Hub (or it is private: set HF_TOKEN); check the id or give a folder"
    if isinstance(error, hub_errors.HfHubHTTPError) and error.response is not None \
            and error.response.status_code in (401, 403):
        return (f"{what} the Hub refused access ({error.response.status_code}); set HF_TOKEN to a token allowed "
                "to read it")
    if isinstance(error, hub_errors.IncompleteSnapshotError):
        return f"{what} the cached snapshot is incomplete (an interrupted download); {fetch_hint} to finish it"
    if isinstance(error, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)):
        return f"{what} not in the Hugging Face cache ({cache_dir() or 'the default'}) and the Hub cannot be " \
               f"reached{' (HF_HUB_OFFLINE is set)' if offline() else ''}: {fetch_hint}"
    if isinstance(error, (OSError, hub_errors.HfHubHTTPError)) or type(error).__module__.startswith("httpx"):
        reason = (str(error).splitlines() or [""])[0]
        return f"{what} the download was interrupted ({type(error).__name__}: {reason}); run the same command " \
               "again: the files it finished are kept"
    return None


@dataclass
class ModelsReport:
    """What `models fetch` / `models info` print: one block of lines per model."""

    blocks: list[list[str]]
    exit_code: int = 0

    def lines(self) -> list[str]:
        return [line for block in self.blocks for line in block]


def fetch_models(ids: list[str], revision: str = "", to: str = "", progress: bool = True) -> ModelsReport:
    """Pre-fill the cache (or folder `to`) with the loading files of each id, for machines without the internet."""
    blocks = []
    for value in ids:
        repo_id, rev = split_hub_id(value, revision)
        target = None if not to else Path(to) if len(ids) == 1 else Path(to) / repo_id.replace("/", "--")
        source = fetch(repo_id, rev, to=target, name=f"models fetch {value}:", progress=progress)
        blocks.append([f"fetched {repo_id}@{rev} (commit {source.commit or 'unknown'}) into {source.folder}"])
    return ModelsReport(blocks)


def model_info(value: str) -> ModelsReport:
    """Where a model argument resolves, which repo and commit it came from, its kind and its weights."""
    source = resolve_model(value, name=f"models info {value}:")
    if not source.folder.is_dir():
        raise MullamaError(f"models info {value}: no such folder, and not a Hub id (ORG/NAME[@REVISION])")
    config = source.folder / "config.json"
    kind = json.loads(config.read_text()).get("model_type", "?") if config.is_file() else "? (no config.json)"
    weights = sorted(p for kind_ in WEIGHT_KINDS for pattern in kind_ for p in source.folder.rglob(pattern))
    size = sum(p.stat().st_size for p in weights)
    return ModelsReport([[f"folder:   {source.folder}",
                          f"hub id:   {source.repo_id or '(a local folder)'}",
                          f"commit:   {source.commit or '-'}",
                          f"kind:     {kind}",
                          f"weights:  {len(weights)} file(s), {size / 2**20:.1f} MiB"]])
