"""The HTTP edge's one mapping from a service's refusal to a status and OpenAI's error body, and the bounded lines
of the server's one-thread workers (music), without loading a model."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from mullama.config import validate
from mullama.errors import MullamaError
from mullama.serve.config import ChatDefaults, ServeConfig
from mullama.serve.http_guard import HttpGuard
from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_errors import install_error_handlers, openai_error, validation_error
from mullama.serve.openai_types import ChatRequest
from mullama.serve.services.catalog import Catalog
from mullama.serve.services.chat import ChatService
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
    music = MusicService(_Generator(), _Decoder(), ServeConfig(adapter="adapter", llama="llama"))
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


# ---------------------------------------------------------------- issue 27: bounded requests, honest errors

class _Metrics:
    """ServerMetrics' face for a ChatService: counters that count nothing."""

    class _Counter:
        def inc(self, *args: object) -> None:
            pass

    cancelled = _Counter()


class _Model:
    """ServedModel's face: one token per word, a 64-position context."""

    name, context_length = "mu", 64

    def check(self, model_id: str) -> None:
        pass

    def prompt(self, talk) -> list[int]:
        return [0] * len(talk.question.split())


class _Decoder:
    kind, frame_rate, max_seconds, sampling_rate, melody = "musicgen", 50, 10.16, 32000, False


class _Generator:
    config = SimpleNamespace(tokens=8)


def music_chat(compose, **options: object) -> ChatService:
    """A ChatService whose music thread runs `compose` (no model is loaded)."""
    config = ServeConfig(adapter="adapter", llama="llama", **options)
    music = MusicService(_Generator(), _Decoder(), config)
    music.compose = compose  # type: ignore[method-assign]
    return ChatService(_Model(), None, None, music, None, _Metrics(), ChatDefaults.of(config))


def music_request(question: str = "a calm piano piece", **fields: object) -> ChatRequest:
    return ChatRequest.model_validate({"model": "mu", "modalities": ["audio"],
                                       "messages": [{"role": "user", "content": question}], **fields})


async def _stay() -> bool:
    return False


def refusal(chat: ChatService, request: ChatRequest) -> tuple[int, dict]:
    with pytest.raises(RequestError) as refused:
        asyncio.run(chat.complete(request, _stay))
    return openai_error(refused.value)


def test_a_music_prompt_longer_than_the_context_is_refused_like_the_text_path():
    made: list[str] = []
    chat = music_chat(lambda request, *args: made.append(request) or b"RIFF")
    status, body = refusal(chat, music_request("music " * 60))  # 60 words + 8 output tokens > 64 positions
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "messages" and made == []
    assert asyncio.run(chat.complete(music_request("music " * 50), _stay))["choices"]


@pytest.mark.parametrize("seconds", [1e-9, 0.01, 10.2, 20.0])
def test_music_seconds_outside_the_decoders_range_name_the_field_and_the_range(seconds):
    chat = music_chat(lambda *args: b"RIFF")
    status, body = refusal(chat, music_request(seconds=seconds))
    assert status == 400 and body["error"]["param"] == "seconds", body
    assert "--" not in body["error"]["message"] and "0.02" in body["error"]["message"] and "10.16" in \
        body["error"]["message"], body


def test_max_music_seconds_is_clamped_to_what_the_loaded_decoder_makes():
    chat = music_chat(lambda *args: b"RIFF", max_music_seconds=30.0)
    assert chat.music.longest == 10.16 and chat.music.shortest == 0.02
    assert "10.16" in chat.music.limit_note()
    assert music_chat(lambda *args: b"RIFF", max_music_seconds=5.0).music.limit_note() == ""


def test_a_waiting_music_request_is_cancelled_when_its_client_leaves():
    release, started = threading.Event(), threading.Event()
    made: list[str] = []

    def compose(request: str, *args: object) -> bytes:
        made.append(request)
        started.set()
        release.wait(30)
        return b"RIFF"

    chat = music_chat(compose)

    async def scenario() -> object:
        running = asyncio.ensure_future(chat.complete(music_request("first"), _stay))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        gone = asyncio.Event()

        async def disconnected() -> bool:
            return gone.is_set()

        waiting = asyncio.ensure_future(chat.complete(music_request("abandoned"), disconnected))
        await asyncio.sleep(0.3)
        assert chat.music.worker.waiting == 2
        gone.set()
        left = await asyncio.wait_for(waiting, 5)  # answered None at once, while the first still runs
        assert chat.music.worker.waiting == 1
        release.set()
        await running
        after = await chat.complete(music_request("after"), _stay)
        return left, after

    left, after = asyncio.run(scenario())
    assert left is None and after["choices"] and made == ["first", "after"]  # the abandoned one never ran


def guarded(api_key: str = "", body_timeout: float = 30.0) -> HttpGuard:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(payload: Payload) -> dict:
        return {"k": payload.k}

    return HttpGuard(app, 1000, ServerMetrics(), api_key, body_timeout)


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not():
    client = TestClient(guarded("secret"))
    for header, status in (("Bearer secret", 200), ("bearer secret", 200), ("BEARER  secret", 200),
                           ("bearer Secret", 401), ("Basic secret", 401), ("secret", 401), ("bearer", 401)):
        response = client.post("/v1/echo", json={"k": 1}, headers={"Authorization": header})
        assert response.status_code == status, header


def test_a_body_that_stops_arriving_gets_408_in_openai_shape():
    guard = guarded(body_timeout=0.2)
    sent: list[dict] = []
    scope = {"type": "http", "method": "POST", "path": "/v1/echo", "headers": [(b"content-length", b"100")],
             "query_string": b"", "root_path": ""}
    parts = iter([{"type": "http.request", "body": b'{"k": ', "more_body": True}])

    async def receive() -> dict:
        part = next(parts, None)
        if part is None:
            await asyncio.sleep(3600)  # the client never sends the rest
        return part

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 5))
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == {
        "message": "the request body did not arrive within 0.2 s", "type": "invalid_request_error", "param": None,
        "code": "request_timeout"}


def test_the_body_timeout_option_is_validated():
    with pytest.raises(MullamaError, match="--body-timeout-s"):
        validate(ServeConfig(adapter="a", llama="l", body_timeout_s=0))


def test_validation_errors_name_the_nested_field_without_union_member_tags():
    def param_of(body: dict) -> str:
        with pytest.raises(ValidationError) as caught:
            ChatRequest.model_validate(body)
        errors = [{**error, "loc": ("body", *error["loc"])} for error in caught.value.errors()]
        return validation_error(RequestValidationError(errors)).param

    audio = {"type": "input_audio", "input_audio": {"data": 5, "format": "wav"}}
    assert param_of({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"},
                                                                             audio]}]}) \
        == "messages[0].content[1].input_audio.data"
    assert param_of({"model": "m", "messages": [{"role": "user", "content": 5}]}) == "messages[0].content"
    assert param_of({"model": "m", "messages": [{"role": "user", "content": "x"}], "seconds": "long"}) == "seconds"


class _Record:
    def __init__(self, source: str):
        self.source = source


class _Store:
    """FeatureStore's face for a Catalog: clip id -> the recorded source."""

    def __init__(self, sources: dict[str, str]):
        self.sources = sources

    def __contains__(self, clip: str) -> bool:
        return clip in self.sources

    def record(self, clip: str) -> _Record:
        return _Record(self.sources[clip])


def test_recorded_sources_resolve_under_the_audio_root_and_never_escape_it(tmp_path, monkeypatch):
    root = tmp_path / "demo-run" / "corpus" / "audio"
    root.mkdir(parents=True)
    for name in ("demo_0000.wav", "demo_0001.wav", "demo_0002.wav"):
        (root / name).write_bytes(b"RIFF")
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF")
    (root / "link.wav").symlink_to(outside)
    catalog = Catalog(_Store({
        "demo_0000.wav": "demo-run/corpus/audio/demo_0000.wav",  # relative to where extraction ran
        "demo_0001.wav": str(root / "demo_0001.wav"),  # absolute
        "demo_0002.wav": "demo_0002.wav",  # relative to the root
        "moved": "/elsewhere/corpus/audio/demo_0000.wav",  # recorded elsewhere: its tail under the root
        "escape": "../../secret.wav", "absolute-outside": str(outside), "link": "link.wav",
        "missing": "demo-run/corpus/audio/none.wav"}), root.resolve())
    monkeypatch.chdir(tmp_path / "demo-run")  # not where extraction ran
    assert catalog.audio_path("demo_0000.wav") == root.resolve() / "demo_0000.wav"
    assert catalog.audio_path("demo_0001.wav") == root.resolve() / "demo_0001.wav"
    assert catalog.audio_path("demo_0002.wav") == root.resolve() / "demo_0002.wav"
    assert catalog.audio_path("moved") == root.resolve() / "demo_0000.wav"
    for clip in ("escape", "absolute-outside", "link", "missing"):
        assert catalog.audio_path(clip) is None, clip
