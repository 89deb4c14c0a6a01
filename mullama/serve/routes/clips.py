"""The catalog: search the stored clips, one clip's fields, its audio file."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from mullama.serve.routes.state import State

CLIPS_PAGE = 20  # clips a search lists unless it asks for another number
MAX_CLIPS = 100
MAX_QUERY = 200

router = APIRouter()


@router.get("/v1/clips")
async def clips(state: State, query: str = Query("", max_length=MAX_QUERY),
                limit: int = Query(CLIPS_PAGE, ge=1, le=MAX_CLIPS)) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(state.resources.catalog.search, query, limit)}


# Plain functions: FastAPI runs them in its thread pool, off the event loop (they read the store and files).
@router.get("/v1/clips/{clip_id:path}")
def clip(clip_id: str, state: State) -> dict[str, Any]:
    return state.resources.catalog.clip_info(clip_id)


@router.get("/v1/audio/{clip_id:path}")
def clip_audio(clip_id: str, state: State) -> FileResponse:
    return FileResponse(state.resources.catalog.playable_path(clip_id))
