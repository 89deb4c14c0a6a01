"""The HTTP edge's one mapping from a service's refusal to a status and OpenAI's error body, and the bounded lines
of the server's one-thread workers (music), without loading a model."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from mullama.serve.config import ServeConfig
from mullama.serve.openai_errors import install_error_handlers, openai_error
from mullama.serve.services.errors import (
    Busy,
    Failed,
    Invalid,
    NotFound,
    RequestError,
    TooLarge,
    Unauthorized,
    Unsupported,
)
from mullama.serve.services.music import MAX_MUSIC_WAITING, MusicService

# (the refusal, its status, OpenAI's error body)
REFUSALS = [
    (Invalid("max_tokens 9 is over", "max_tokens", "max_tokens_too_large"), 400,
     {"message": "max_tokens 9 is over", "type": "invalid_request_error", "param": "max_tokens",
      "code": "max_tokens_too_large"}),
    (Invalid("messages must end with a user message", "messages"), 400,
     {"message": "messages must end with a user message", "type": "invalid_request_error", "param": "messages",
      "code": None}),
    (Unsupported("no store", "clip_id", "no_store"), 400,
     {"message": "no store", "type": "invalid_request_error", "param": "clip_id", "code": "no_store"}),
    (Unauthorized("a valid API key is needed"), 401,
     {"message": "a valid API key is needed", "type": "authentication_error", "param": None,
      "code": "invalid_api_key"}),
    (NotFound("clip 'x' is not a stored clip", "clip_id", "clip_not_found"), 404,
     {"message": "clip 'x' is not a stored clip", "type": "invalid_request_error", "param": "clip_id",
      "code": "clip_not_found"}),
    (TooLarge("too long", "input_audio", "audio_too_long"), 413,
     {"message": "too long", "type": "invalid_request_error", "param": "input_audio", "code": "audio_too_long"}),
    (Busy("4 music requests are already waiting; retry shortly"), 429,
     {"message": "4 music requests are already waiting; retry shortly", "type": "rate_limit_error", "param": None,
      "code": "server_busy"}),
    (Busy("8 uploads are already waiting", "input_audio"), 429,
     {"message": "8 uploads are already waiting", "type": "rate_limit_error", "param": "input_audio",
      "code": "server_busy"}),
    (Failed("generation failed"), 500,
     {"message": "generation failed", "type": "server_error", "param": None, "code": None}),
]


@pytest.mark.parametrize("error, status, body", REFUSALS, ids=lambda v: type(v).__name__ if isinstance(v, Exception)
                         else None)
def test_each_refusal_maps_to_its_status_and_openai_body(error, status, body):
    assert openai_error(error) == (status, {"error": body})


class Payload(BaseModel):
    k: int


def test_the_app_answers_refusals_validation_routing_and_bugs_in_openai_shape():
    app = FastAPI()
    install_error_handlers(app)
    raised: list[Exception] = []

    @app.get("/refuse")
    async def refuse() -> None:
        raise raised[0]

    @app.post("/body")
    async def body(payload: Payload) -> dict:
        return {"k": payload.k}

    client = TestClient(app, raise_server_exceptions=False)
    for error, status, expected in REFUSALS:
        raised[:] = [error]
        response = client.get("/refuse")
        assert (response.status_code, response.json()) == (status, {"error": expected})
    raised[:] = [KeyError("a bug")]
    response = client.get("/refuse")
    assert response.status_code == 500 and response.json()["error"] == {
        "message": "the server failed on this request; see its log", "type": "server_error", "param": None,
        "code": None}
    response = client.post("/body", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = client.post("/body", json={"k": "many"})
    assert response.status_code == 400
    assert response.json()["error"] | {"message": ""} == {"message": "", "type": "invalid_request_error",
                                                          "param": "k", "code": "invalid_value"}
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    response = client.post("/refuse")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_music_requests_beyond_the_waiting_limit_are_refused_busy_and_the_line_drains():
    music = MusicService(None, None, ServeConfig(adapter="adapter", llama="llama"))
    release = threading.Event()
    started = threading.Event()

    def compose(request: str, *args: object) -> bytes:  # the decoder at work: holds the one music thread
        started.set()
        release.wait(30)
        return request.encode()

    music.compose = compose  # type: ignore[method-assign]

    async def scenario() -> tuple[list[bytes], RequestError, bytes]:
        waiting = [asyncio.ensure_future(music.make(f"piece {i}", None, None, 1.0, None, ".wav"))
                   for i in range(MAX_MUSIC_WAITING)]
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        with pytest.raises(Busy) as refused:
            await music.make("one too many", None, None, 1.0, None, ".wav")
        release.set()
        done = await asyncio.gather(*waiting)
        return done, refused.value, await music.make("after", None, None, 1.0, None, ".wav")

    done, refused, after = asyncio.run(scenario())
    assert done == [f"piece {i}".encode() for i in range(MAX_MUSIC_WAITING)] and after == b"after"
    assert openai_error(refused) == (429, {"error": {
        "message": f"{MAX_MUSIC_WAITING} music requests are already waiting; retry shortly",
        "type": "rate_limit_error", "param": None, "code": "server_busy"}})
    assert music.worker.waiting == 0
