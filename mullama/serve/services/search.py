"""Clips by words: a query embedded by the text index's own model, answered with the clips whose captions are
nearest (docs/knn.md, "Find music by words")."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from mullama.errors import MullamaError
from mullama.knn.clip_index import ClipIndex, open_index
from mullama.serve.config import ServeConfig
from mullama.serve.openai_types import SearchRequest
from mullama.serve.services.catalog import Catalog
from mullama.serve.services.errors import Invalid, Unsupported
from mullama.store.feature_store import FeatureStore


def load_text_index(config: ServeConfig, store: FeatureStore | None) -> tuple[ClipIndex | None, list[str]]:
    """--text-index, checked to be a text index of --store, its model loaded once (and checked against the
    identity the index records) before the server answers; returns it and its warnings."""
    if not config.text_index:
        return None, []
    index = open_index(config.text_index, config.store)
    if not index.metadata.recipe.is_text:
        raise MullamaError(f"--text-index {config.text_index} indexes audio stacks (recipe "
                           f"{index.metadata.recipe.name}); give an index built with `mullama index build --captions`")
    warnings = index.check_store(store) if store is not None else []
    index.embed_texts(["music"])  # loads the model now: a moved or changed model folder fails at start
    return index, warnings


class SearchService:
    def __init__(self, index: ClipIndex | None, catalog: Catalog):
        self.index, self.catalog = index, catalog

    async def find(self, request: SearchRequest) -> list[dict[str, Any]]:
        return await run_in_threadpool(self.search, request.query, request.k)

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        if self.index is None:
            raise Unsupported("this server has no text index (start it with --text-index)", None, "no_text_index")
        if not query.strip():
            raise Invalid("query must hold words to search for", "query")
        try:
            found = self.index.search(texts=[query], k=k)[0]
        except MullamaError as exc:
            raise Invalid(str(exc), "query") from None
        return [{"object": "search.result", "clip_id": n.clip_id, "score": n.score, "captions": list(n.captions),
                 "duration": n.duration, "playable": self.catalog.audio_path(n.clip_id) is not None} for n in found]
