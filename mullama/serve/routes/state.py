"""What the routes reach: the loaded parts and the services `create_app` puts on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from mullama.serve.engine import BatchEngine
from mullama.serve.metrics import ServerMetrics
from mullama.serve.services.chat import ChatService
from mullama.serve.services.resources import Resources
from mullama.serve.services.search import SearchService
from mullama.serve.services.similar import SimilarService


@dataclass
class ApiState:
    resources: Resources
    engine: BatchEngine
    metrics: ServerMetrics
    chat: ChatService
    similar: SimilarService
    search: SearchService


async def api_state(request: Request) -> ApiState:  # (async: no thread-pool hop to read an attribute)
    return request.app.state.api


State = Annotated[ApiState, Depends(api_state)]
