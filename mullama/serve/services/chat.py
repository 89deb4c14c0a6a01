"""Chat about a track: a request checked, its prompt built, its track read, admitted to the batch engine, and
waited for whole or streamed; or, with `modalities: ["audio"]`, music made for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.concurrency import run_in_threadpool

from mullama.model.settings import GenerationSettings
from mullama.serve.config import ChatDefaults
from mullama.serve.engine import BatchEngine, Completion, Job
from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_errors import openai_error
from mullama.serve.openai_replies import DONE_EVENT, Reply, event
from mullama.serve.openai_types import ChatRequest
from mullama.serve.services.catalog import Catalog
from mullama.serve.services.conversation import Conversation, conversation
from mullama.serve.services.errors import Busy, Failed, Invalid, Unsupported
from mullama.serve.services.music import MusicService
from mullama.serve.services.served_model import ServedModel
from mullama.serve.services.uploads import Uploads

DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there
Disconnected = Callable[[], Awaitable[bool]]  # whether the client has gone (Starlette's request.is_disconnected)


class ChatStream:
    """An admitted streamed request: its server-sent events (a role chunk, content deltas, a chunk with
    finish_reason, usage when asked, [DONE]); leaving before the end cancels its row."""

    def __init__(self, job: Job, reply: Reply, include_usage: bool, started: float, metrics: ServerMetrics):
        self.job, self.reply, self.include_usage = job, reply, include_usage
        self.started, self.metrics = started, metrics

    def cancel(self) -> None:
        self.job.cancel()

    async def events(self) -> AsyncIterator[str]:
        finished = False
        first = True
        try:
            yield self.reply.chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await self.job.events.get()
                if kind == "delta":
                    if first:
                        self.metrics.first_token.observe(time.monotonic() - self.started)
                        first = False
                    yield self.reply.chunk({"content": value})
                elif kind == "done":
                    count_tokens(self.metrics, value)
                    yield self.reply.chunk({}, value.finish_reason)
                    if self.include_usage:
                        yield self.reply.usage_chunk(value)
                    yield DONE_EVENT
                    finished = True
                    return
                else:
                    yield event(openai_error(Failed(value))[1])
                    finished = True
                    return
        finally:
            if not finished:
                self.job.cancel()
                self.metrics.cancelled.inc()


def count_tokens(metrics: ServerMetrics, completion: Completion) -> None:
    metrics.tokens.labels("prompt").inc(completion.prompt_tokens)
    metrics.tokens.labels("completion").inc(completion.completion_tokens)


async def wait_whole(job: Job, disconnected: Disconnected, metrics: ServerMetrics) -> Completion | None:
    """The whole answer, or None when the client left first. One pending get() is kept across polls, so an event
    arriving as a poll times out is never lost."""
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(job.events.get())
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if not done:
                if await disconnected():
                    job.cancel()
                    metrics.cancelled.inc()
                    return None
                continue
            (kind, value), getter = getter.result(), None
            if kind == "done":
                return value
            if kind == "error":
                raise Failed(value)
    except asyncio.CancelledError:  # the server is shutting down, or the connection task was cancelled
        job.cancel()
        raise
    finally:
        if getter is not None:
            getter.cancel()


class ChatService:
    def __init__(self, model: ServedModel, catalog: Catalog, uploads: Uploads, music: MusicService | None,
                 engine: BatchEngine, metrics: ServerMetrics, defaults: ChatDefaults):
        self.model, self.catalog, self.uploads, self.music = model, catalog, uploads, music
        self.engine, self.metrics, self.defaults = engine, metrics, defaults

    async def complete(self, request: ChatRequest,
                       disconnected: Disconnected) -> dict[str, Any] | ChatStream | None:
        """The whole reply, the stream to send, or None when the client left before its answer (nobody reads it)."""
        started = time.monotonic()
        self.model.check(request.model)
        talk = conversation(request, self.defaults.max_history)
        max_tokens = self.max_tokens(request)
        if request.clip_id is not None and talk.audio is not None:
            raise Invalid("give clip_id or an input_audio part, not both", "clip_id", "one_track")
        if request.modalities and "audio" in request.modalities:
            return await self.music_reply(request, talk, disconnected)
        if request.clip_id is None and talk.audio is None:
            raise Invalid("the request names no track: add an input_audio part or a clip_id", "messages", "no_track")
        prompt = await run_in_threadpool(self.model.prompt, talk)
        if len(prompt) + max_tokens > self.model.context_length:
            raise Invalid(f"the conversation ({len(prompt)} tokens) and max_tokens {max_tokens} exceed the model's "
                          f"{self.model.context_length} positions", "messages", "context_length_exceeded")
        stack = await self.stack(request, talk)
        if await disconnected():  # it left while its track was read or encoded
            return None
        job = Job(stack, talk.question, talk.history, self.settings(request, max_tokens), len(prompt),
                  asyncio.get_running_loop(), stream=request.stream)
        if not self.engine.admit(job):
            raise Busy(f"the server is busy ({self.defaults.max_pending} requests in flight); retry shortly")
        reply = Reply(self.model.name)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return ChatStream(job, reply, include_usage, started, self.metrics)
        completion = await wait_whole(job, disconnected, self.metrics)
        if completion is None:
            return None
        count_tokens(self.metrics, completion)
        return reply.whole(completion)

    def max_tokens(self, request: ChatRequest) -> int:
        max_tokens = request.max_completion_tokens or request.max_tokens or self.defaults.max_tokens
        if max_tokens > self.defaults.max_tokens_limit:
            raise Invalid(f"max_tokens {max_tokens} is over this server's limit of {self.defaults.max_tokens_limit}",
                          "max_tokens", "max_tokens_too_large")
        return max_tokens

    def settings(self, request: ChatRequest, max_tokens: int) -> GenerationSettings:
        """The request's sampling, its gaps filled from the defaults; a temperature too small to divide by is
        greedy."""
        temperature = self.defaults.temperature if request.temperature is None else request.temperature
        return GenerationSettings(temperature=temperature if temperature >= self.defaults.min_temperature else 0.0,
                                  top_p=self.defaults.top_p if request.top_p is None else request.top_p,
                                  max_new_tokens=max_tokens, seed=request.seed)

    async def stack(self, request: ChatRequest, talk: Conversation) -> np.ndarray:
        if request.clip_id is not None:
            return await run_in_threadpool(self.catalog.stored_stack, request.clip_id)
        return await self.uploads.stack(await self.uploads.read(talk.audio))

    async def music_reply(self, request: ChatRequest, talk: Conversation,
                          disconnected: Disconnected) -> dict[str, Any] | None:
        """Music for the last user message as message.audio (OpenAI's audio output); with a track, the LLaMA hears
        it and a MusicGen-Melody decoder follows its recording (an edit): the upload, or a stored clip's file when
        the server has --audio-root."""
        if self.music is None:
            raise Unsupported("this server makes no music (start it with --generator)", "modalities", "no_generator")
        if request.stream:
            raise Invalid("audio output is returned whole; send stream: false", "stream", "no_audio_stream")
        seconds = request.seconds or self.defaults.music_seconds
        if seconds > self.defaults.max_music_seconds:
            raise Invalid(f"seconds {seconds} is over this server's limit of {self.defaults.max_music_seconds}",
                          "seconds", "too_long")
        stack: np.ndarray | None = None
        recording: bytes | Path | None = None
        if request.clip_id is not None:
            stack = await run_in_threadpool(self.catalog.stored_stack, request.clip_id)
            recording = self.catalog.audio_path(request.clip_id)  # None without --audio-root: the stack alone
        elif talk.audio is not None:
            recording = await self.uploads.read(talk.audio)
            stack = await self.uploads.stack(recording)
        suffix = "." + (request.audio.format if request.audio else "wav")
        if await disconnected():
            return None
        data = await self.music.make(talk.question, stack, recording, seconds, request.seed, suffix)
        return Reply(self.model.name).music(data)
