"""Similar tracks of a stored clip or an upload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mullama.serve.openai_types import SimilarRequest
from mullama.serve.routes.state import State

router = APIRouter()


@router.post("/v1/similar")
async def similar(payload: SimilarRequest, state: State) -> dict[str, Any]:
    return {"object": "list", "data": await state.similar.find(payload)}
