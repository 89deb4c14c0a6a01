"""OpenAI Chat Completions: an answer about one track, whole or as server-sent events, or music."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from mullama.serve.openai_types import ChatRequest
from mullama.serve.routes.state import State
from mullama.serve.services.chat import ChatStream

CLIENT_CLOSED = 499  # nginx's status for a client that left before its answer (nobody reads it; the logs do)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds the events back

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat(payload: ChatRequest, request: Request, state: State) -> Any:
    answer = await state.chat.complete(payload, request.is_disconnected)
    if answer is None:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(answer, ChatStream):
        # The background task runs even when the client left before the body began (and the body never ran).
        return StreamingResponse(answer.events(), media_type="text/event-stream", headers=STREAM_HEADERS,
                                 background=BackgroundTask(answer.cancel))
    return answer
