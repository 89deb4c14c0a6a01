"""The HTTP API: OpenAI-compatible chat about a track, similar tracks, the catalog, health, metrics and the page.

Every refused request gets OpenAI's error body (`{"error": {"message", "type", "param", "code"}}`) with a
4xx status; a 5xx means a bug or a failed generation, never a malformed request.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from mullama.model.prompts import prompt_ids
from mullama.model.settings import GenerationSettings
from mullama.serve.engine import BatchEngine, Completion, Job
from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_types import ApiError, ChatRequest, InputAudio, SimilarRequest, audio_bytes, conversation

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/health")  # the page (it asks for the key) and the probe; everything else needs the key
# A temperature this small divides logits past float32's range (softmax of inf: NaN, and a failed sampling step;
# on CUDA a device assert that breaks every later request): it is served as what it means, greedy decoding.
MIN_TEMPERATURE = 1e-3
MAX_UPLOADS_WAITING = 8  # uploads queued for the one encoding thread; more get 429
MAX_MUSIC_WAITING = 4  # music requests queued for the one music thread (each takes seconds to minutes); more get 429
DEFAULT_MAX_TOKENS = 512  # `mullama ask`'s default answer length
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there
log = logging.getLogger("mullama.serve")


class HttpGuard:
    """ASGI wrapper, before the app reads anything: checks the API key (every path but the page, its static
    files and /health), refuses bodies over the limit (declared, or counted as they arrive), and counts every
    response."""

    def __init__(self, app: Any, max_body: int, metrics: ServerMetrics, api_key: str):
        self.app, self.max_body, self.metrics = app, max_body, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else b""

    def _authorized(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        path = scope.get("path", "")
        if not self.expected or path in OPEN_PATHS or path.startswith("/static/"):
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), self.expected)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = [500]
        headers = dict(scope.get("headers") or [])
        if not self._authorized(scope, headers):
            error = ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", None,
                             "invalid_api_key", "authentication_error")
            await JSONResponse(error.body(), 401)(scope, receive, send)
            return self._count(scope, 401, started)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            await JSONResponse(_too_large(self.max_body).body(), 413)(scope, receive, send)
            return self._count(scope, 413, started)
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await JSONResponse(_too_large(self.max_body).body(), 413)(scope, receive, send)
                return self._count(scope, 413, started)
            more = message.get("more_body", False)
        replayed = False

        async def replay_then_receive() -> dict:  # the app reads the body once, then waits for a disconnect
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, replay_then_receive, counted_send)
        finally:
            self._count(scope, status[0], started)

    def _count(self, scope: dict, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", "other")
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.monotonic() - started)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limit / 1e6:g} MB", None,
                    "request_too_large")


def _param(location: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in location if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or None


def create_app(resources: Any, engine: BatchEngine, metrics: ServerMetrics, api_key: str = "",
               max_body: int = 64_000_000) -> Any:
    """The FastAPI app, wrapped in the key check, the body limit and request metrics (an ASGI app for
    uvicorn)."""
    config = resources.config
    app = FastAPI(title="mullama", description="MU-LLaMA answers about music, OpenAI-compatible", redoc_url=None)
    created = int(time.time())
    uploads_waiting = 0
    music_waiting = 0

    async def upload_stack(audio: InputAudio) -> np.ndarray:
        """The stack of an uploaded track: from the cache when this conversation sent it before, else
        decoded and encoded on the one upload thread (a bounded queue: memory and CPU stay bounded)."""
        nonlocal uploads_waiting
        data = await run_in_threadpool(audio_bytes, audio, "input_audio")
        digest, stack = await run_in_threadpool(resources.cached_upload, data)
        if stack is not None:
            return stack
        if uploads_waiting >= MAX_UPLOADS_WAITING:
            raise ApiError(429, f"{MAX_UPLOADS_WAITING} uploads are already waiting to be encoded; retry shortly",
                           "input_audio", "server_busy", "rate_limit_error")
        uploads_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(resources.upload_thread, resources.uploaded_stack,
                                                                    data, digest, "input_audio")
        finally:
            uploads_waiting -= 1

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return JSONResponse(ApiError(400, "the request body is not valid JSON", None, "invalid_json").body(), 400)
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(ApiError(400, message, param, "invalid_value").body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), None, code).body(), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(ApiError(500, "the server failed on this request; see its log", None, None,
                                     "server_error").body(), 500)

    # ------------------------------------------------------------------ info
    @app.get("/health")
    def health() -> JSONResponse:
        alive = engine.alive
        return JSONResponse({"status": "ok" if alive else "generation worker stopped", "model": resources.model_name,
                             "stored_clips": len(resources.store or ()), "uploads": resources.encoder is not None,
                             "index": resources.index is not None, "pending": engine.pending}, 200 if alive else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": resources.model_name, "object": "model", "created": created, "owned_by": "mullama"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != resources.model_name:
            raise ApiError(404, f"model {model_id!r} does not exist; this server serves {resources.model_name!r}",
                           "model", "model_not_found")
        return model_card()

    @app.get("/v1/clips")
    async def clips(query: str = Query("", max_length=200), limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
        infos = await run_in_threadpool(lambda: [resources.clip_info(c) for c in resources.clip_ids(query, limit)])
        return {"object": "list", "data": infos}

    # Plain functions: FastAPI runs them in its thread pool, off the event loop (they read the store and files).
    @app.get("/v1/clips/{clip_id:path}")
    def clip(clip_id: str) -> dict[str, Any]:
        return resources.clip_info(clip_id)

    @app.get("/v1/audio/{clip_id:path}")
    def clip_audio(clip_id: str) -> FileResponse:
        path = resources.audio_path(clip_id)
        if path is None:
            raise ApiError(404, f"no playable audio for clip {clip_id!r} (the server plays files under "
                                "--audio-root only)", "clip_id", "audio_not_found")
        return FileResponse(path)

    # ------------------------------------------------------------------ similar tracks
    @app.post("/v1/similar")
    async def similar(payload: SimilarRequest) -> dict[str, Any]:
        if (payload.clip_id is None) == (payload.input_audio is None):
            raise ApiError(400, "give exactly one of clip_id and input_audio", None, "one_track")
        if payload.clip_id is not None:
            found = await run_in_threadpool(resources.similar, payload.k, payload.clip_id)
        else:
            found = await run_in_threadpool(resources.similar, payload.k, None, await upload_stack(payload.input_audio))
        return {"object": "list", "data": found}

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat(payload: ChatRequest, request: Request) -> Any:
        started = time.monotonic()
        if payload.model != resources.model_name:
            raise ApiError(404, f"model {payload.model!r} does not exist; this server serves "
                                f"{resources.model_name!r}", "model", "model_not_found")
        talk = conversation(payload, config.max_history)
        max_tokens = payload.max_completion_tokens or payload.max_tokens or min(DEFAULT_MAX_TOKENS, config.max_tokens)
        if max_tokens > config.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {config.max_tokens}",
                           "max_tokens", "max_tokens_too_large")
        if payload.clip_id is not None and talk.audio is not None:
            raise ApiError(400, "give clip_id or an input_audio part, not both", "clip_id", "one_track")
        if payload.modalities and "audio" in payload.modalities:
            return await music_reply(payload, talk, request)
        if payload.clip_id is None and talk.audio is None:
            raise ApiError(400, "the request names no track: add an input_audio part or a clip_id", "messages",
                           "no_track")
        prompt = await run_in_threadpool(prompt_ids, resources.model.tokenizer, talk.question,
                                         resources.model.prompt_format, talk.history)
        if len(prompt) + max_tokens > resources.context_length:
            raise ApiError(400, f"the conversation ({len(prompt)} tokens) and max_tokens {max_tokens} exceed the "
                                f"model's {resources.context_length} positions", "messages",
                           "context_length_exceeded")
        if payload.clip_id is not None:
            stack = await run_in_threadpool(resources.stored_stack, payload.clip_id)
        else:
            stack = await upload_stack(talk.audio)
        temperature = 0.6 if payload.temperature is None else payload.temperature
        settings = GenerationSettings(temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
                                      top_p=0.8 if payload.top_p is None else payload.top_p,
                                      max_new_tokens=max_tokens, seed=payload.seed)
        if await request.is_disconnected():  # it left while its track was read or encoded
            return Response(status_code=499)
        job = Job(stack, talk.question, talk.history, settings, len(prompt), asyncio.get_running_loop(),
                  stream=payload.stream)
        if not engine.admit(job):
            raise ApiError(429, f"the server is busy ({config.max_pending} requests in flight); retry shortly", None,
                           "server_busy", "rate_limit_error")
        reply = Reply(resources.model_name)
        if payload.stream:
            include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
            # The background task runs even when the client left before the body began (and the body never ran).
            return StreamingResponse(stream_reply(job, reply, include_usage, started), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.cancel))
        completion = await wait_reply(job, request)
        if completion is None:
            return Response(status_code=499)  # the client left; nobody reads this
        count_tokens(completion)
        return reply.whole(completion)

    async def music_reply(payload: ChatRequest, talk: Any, request: Request) -> Any:
        """Music for the last user message as message.audio (OpenAI's audio output); with a track, the LLaMA hears
        it and a MusicGen-Melody decoder follows its recording (an edit): the upload, or a stored clip's file when
        the server has --audio-root."""
        if resources.generator is None:
            raise ApiError(400, "this server makes no music (start it with --generator)", "modalities",
                           "no_generator")
        if payload.stream:
            raise ApiError(400, "audio output is returned whole; send stream: false", "stream", "no_audio_stream")
        seconds = payload.seconds or min(10.0, config.max_music_seconds)
        if seconds > config.max_music_seconds:
            raise ApiError(400, f"seconds {seconds} is over this server's limit of {config.max_music_seconds}",
                           "seconds", "too_long")
        stack = recording = None
        if payload.clip_id is not None:
            stack = await run_in_threadpool(resources.stored_stack, payload.clip_id)
            recording = resources.audio_path(payload.clip_id)  # None without --audio-root: the stack alone
        elif talk.audio is not None:
            recording = await run_in_threadpool(audio_bytes, talk.audio, "input_audio")
            stack = await upload_stack(talk.audio)
        suffix = "." + (payload.audio.format if payload.audio else "wav")
        if await request.is_disconnected():
            return Response(status_code=499)
        nonlocal music_waiting
        if music_waiting >= MAX_MUSIC_WAITING:
            raise ApiError(429, f"{MAX_MUSIC_WAITING} music requests are already waiting; retry shortly", None,
                           "server_busy", "rate_limit_error")
        music_waiting += 1
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                resources.music_thread, resources.compose, talk.question, stack, recording, seconds, payload.seed,
                suffix)
        finally:
            music_waiting -= 1
        reply = Reply(resources.model_name)
        audio = {"id": f"audio_{uuid.uuid4().hex}", "data": base64.b64encode(data).decode(), "transcript": "",
                 "expires_at": int(time.time()) + 3600}
        return {**reply.head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "audio": audio},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    def count_tokens(completion: Completion) -> None:
        metrics.tokens.labels("prompt").inc(completion.prompt_tokens)
        metrics.tokens.labels("completion").inc(completion.completion_tokens)

    async def wait_reply(job: Job, request: Request) -> Completion | None:
        """The whole answer, or None when the client left first. One pending get() is kept across polls, so
        an event arriving as a poll times out is never lost."""
        getter: asyncio.Future | None = None
        try:
            while True:
                getter = getter or asyncio.ensure_future(job.events.get())
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
                if not done:
                    if await request.is_disconnected():
                        job.cancel()
                        metrics.cancelled.inc()
                        return None
                    continue
                (kind, value), getter = getter.result(), None
                if kind == "done":
                    return value
                if kind == "error":
                    raise ApiError(500, value, None, None, "server_error")
        except asyncio.CancelledError:  # the server is shutting down, or the connection task was cancelled
            job.cancel()
            raise
        finally:
            if getter is not None:
                getter.cancel()

    async def stream_reply(job: Job, reply: "Reply", include_usage: bool, started: float) -> AsyncIterator[str]:
        finished = False
        first = True
        try:
            yield reply.chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await job.events.get()
                if kind == "delta":
                    if first:
                        metrics.first_token.observe(time.monotonic() - started)
                        first = False
                    yield reply.chunk({"content": value})
                elif kind == "done":
                    count_tokens(value)
                    yield reply.chunk({}, value.finish_reason)
                    if include_usage:
                        yield reply.event({**reply.head("chat.completion.chunk"), "choices": [],
                                           "usage": usage(value)})
                    yield "data: [DONE]\n\n"
                    finished = True
                    return
                else:
                    yield reply.event(ApiError(500, value, None, None, "server_error").body())
                    finished = True
                    return
        finally:
            if not finished:
                job.cancel()
                metrics.cancelled.inc()

    # ------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return HttpGuard(app, max_body, metrics, api_key)


def usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


class Reply:
    """OpenAI's response objects for one completion id."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, completion: Completion) -> dict[str, Any]:
        return {**self.head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                             "finish_reason": completion.finish_reason, "logprobs": None}],
                "usage": usage(completion)}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return self.event({**self.head("chat.completion.chunk"),
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                        "logprobs": None}]})

    @staticmethod
    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
