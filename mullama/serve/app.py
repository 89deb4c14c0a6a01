"""The HTTP API: OpenAI-compatible chat about a track, similar tracks, the catalog, health, metrics and the page.

Routes (routes/) are thin: they call the services (services/), which refuse a request with a `RequestError`
kind; openai_errors.py turns each into its status and OpenAI's error body. A 5xx means a bug or a failed
generation, never a malformed request.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mullama.serve.config import ChatDefaults
from mullama.serve.engine import BatchEngine
from mullama.serve.http_guard import HttpGuard
from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_errors import install_error_handlers
from mullama.serve.routes import chat, clips, info, page, search, similar
from mullama.serve.routes.state import ApiState
from mullama.serve.services.chat import ChatService
from mullama.serve.services.resources import Resources
from mullama.serve.services.search import SearchService
from mullama.serve.services.similar import SimilarService


def create_app(resources: Resources, engine: BatchEngine, metrics: ServerMetrics, defaults: ChatDefaults,
               api_key: str = "", max_body: int = 64_000_000, body_timeout: float = 60.0) -> Any:
    """The FastAPI app, wrapped in the key check, the body's size and time limits and request metrics (an ASGI app
    for uvicorn)."""
    app = FastAPI(title="mullama", description="MU-LLaMA answers about music, OpenAI-compatible", redoc_url=None)
    app.state.api = ApiState(
        resources, engine, metrics,
        chat=ChatService(resources.model, resources.catalog, resources.uploads, resources.music, engine, metrics,
                         defaults),
        similar=SimilarService(resources.index, resources.catalog, resources.uploads),
        search=SearchService(resources.text_index, resources.catalog))
    install_error_handlers(app)
    for area in (info, clips, similar, search, chat, page):
        app.include_router(area.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    return HttpGuard(app, max_body, metrics, api_key, body_timeout)
