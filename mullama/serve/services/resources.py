"""What `mullama serve` loads once at start, each part held by the service that uses it.

Every identity is checked before the model's weights load, in this order: the store's encoder against the
adapter's, the index's (and the index against the store), the MERT folder's (before MERT loads), the generator's
folders; the LLaMA folder against the adapter's as the model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mullama.knn.clip_index import ClipIndex, open_index
from mullama.model.checkpoint import read_manifest
from mullama.model.identity import check_encoder
from mullama.model.music_llama import MusicLlama
from mullama.serve.config import ServeConfig
from mullama.serve.services.catalog import Catalog, audio_root
from mullama.serve.services.music import MusicService, load_music, music_folders
from mullama.serve.services.search import load_text_index
from mullama.serve.services.served_model import ServedModel
from mullama.serve.services.uploads import Uploads, load_upload_encoder
from mullama.store.feature_store import FeatureStore
from mullama.store.schema import StoreSettings


@dataclass
class Resources:
    model: ServedModel
    catalog: Catalog
    uploads: Uploads
    index: ClipIndex | None
    music: MusicService | None  # None without --generator
    text_index: ClipIndex | None = None  # None without --text-index
    warnings: list[str] = field(default_factory=list)


def load_resources(config: ServeConfig) -> Resources:
    root = audio_root(config)
    manifest = read_manifest(config.adapter)
    store = FeatureStore.open(config.store) if config.store else None
    if store is not None:
        check_encoder(manifest.encoder, store.encoder, strict=True)
    warnings: list[str] = []
    index = open_index(config.index, config.store) if config.index else None
    if index is not None:
        check_encoder(manifest.encoder, index.encoder, strict=True)
        warnings += index.home_store_warnings()
        if store is not None:
            warnings += index.check_store(store)
    text_index, text_warnings = load_text_index(config, store)
    warnings += text_warnings
    settings = store.effective_settings() if store is not None else StoreSettings()
    encoder = load_upload_encoder(config, manifest, settings)
    identity = store.encoder if store is not None else (encoder.identity if encoder else None)
    folders = music_folders(config) if config.generator else None  # checked before the model's weights load
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device, encoder=identity)
    music = load_music(config, model, folders) if folders is not None else None
    if music is not None and music.limit_note():
        warnings.append(music.limit_note())
    return Resources(model=ServedModel(model, config.model_name or Path(config.adapter).resolve().name),
                     catalog=Catalog(store, root), uploads=Uploads(encoder, settings, config), index=index,
                     music=music, warnings=warnings, text_index=text_index)
