"""The probe, the metrics and the one served model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mullama.serve.routes.state import State

router = APIRouter()


@router.get("/health")
def health(state: State) -> JSONResponse:
    """503 once the generation worker has stopped; never needs a key (for probes)."""
    alive, resources = state.engine.alive, state.resources
    return JSONResponse({"status": "ok" if alive else "generation worker stopped", "model": resources.model.name,
                         "stored_clips": len(resources.catalog), "uploads": resources.uploads.encoder is not None,
                         "index": resources.index is not None, "pending": state.engine.pending}, 200 if alive else 503)


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [state.resources.model.card()]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, state: State) -> dict[str, Any]:
    state.resources.model.check(model_id)
    return state.resources.model.card()
