"""Clips found by words (a text index of their captions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mullama.serve.openai_types import SearchRequest
from mullama.serve.routes.state import State

router = APIRouter()


@router.post("/v1/search")
async def search(payload: SearchRequest, state: State) -> dict[str, Any]:
    return {"object": "list", "data": await state.search.find(payload)}
