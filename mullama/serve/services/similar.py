"""Similar tracks: a stored clip's or an upload's neighbours in the kNN index (a stored clip is never its own)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from mullama.errors import MullamaError
from mullama.knn.clip_index import ClipIndex
from mullama.serve.openai_types import SimilarRequest
from mullama.serve.services.catalog import Catalog
from mullama.serve.services.errors import Invalid, NotFound, Unsupported
from mullama.serve.services.uploads import Uploads


class SimilarService:
    def __init__(self, index: ClipIndex | None, catalog: Catalog, uploads: Uploads):
        self.index, self.catalog, self.uploads = index, catalog, uploads

    async def find(self, request: SimilarRequest) -> list[dict[str, Any]]:
        if (request.clip_id is None) == (request.input_audio is None):
            raise Invalid("give exactly one of clip_id and input_audio", None, "one_track")
        if request.clip_id is not None:
            return await run_in_threadpool(self.similar, request.k, request.clip_id)
        stack = await self.uploads.stack(await self.uploads.read(request.input_audio))
        return await run_in_threadpool(self.similar, request.k, None, stack)

    def similar(self, k: int, clip_id: str | None = None, stack: np.ndarray | None = None) -> list[dict[str, Any]]:
        if self.index is None:
            raise Unsupported("this server has no kNN index (start it with --index)", None, "no_index")
        try:
            if clip_id is not None:
                found = self.index.search(clip_ids=[clip_id], k=k)[0]
            else:
                encoder = self.uploads.encoder
                identity = encoder.identity if encoder is not None else None
                found = self.index.search(stacks=stack[None], encoder=identity, k=k)[0]
        except MullamaError as exc:
            if clip_id is not None:  # (the library's message names the index's path: not for clients)
                raise NotFound(f"clip {clip_id!r} is not in the index", "clip_id", "clip_not_found") from None
            raise Invalid(str(exc), "input_audio") from None
        return [{"clip_id": n.clip_id, "score": n.score, "duration": n.duration,
                 "playable": self.catalog.audio_path(n.clip_id) is not None} for n in found]
