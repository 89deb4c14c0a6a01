"""Dynamic batching: concurrent chat requests share one generate() call, each streamed as it grows.

One worker thread owns the model. Requests wait in a queue; under load the first of a batch waits at most `wait_s`
for others with the same sampling settings to join (up to `max_batch`), then all are generated together,
left-padded. Each row ends on its own EOS, its own max_tokens, or as soon as its client goes away (a
per-row stopping criterion), so a short request is answered, and an abandoned one dropped, without waiting
for the rest of its batch.
A request with a seed runs alone: its answer then equals `MusicLlama.answer` with that seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from mullama.model.prompts import Turn
from mullama.model.settings import GenerationSettings

INCOMPLETE_CHARACTER = "\ufffd"  # what a tokenizer decodes the first bytes of a multi-byte character to
# Waiting for companions pays only under load, where clients come back within the wait (closed-loop clients
# on 2 cores returned within 10-40 ms): the engine waits when two or more requests were in flight together, or
# a batch of several rows ended, less than this long ago; a lone client, however fast it asks, starts at once.
IDLE_AFTER_S = 1.0
log = logging.getLogger("mullama.serve")


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (EOS), length (max_tokens), cancelled (the client left)


@dataclass(eq=False)
class Job:
    """One request: its inputs, and the events ("delta", text), ("done", Completion), ("error", message) it
    receives on its own event loop."""

    stack: np.ndarray
    question: str
    history: Sequence[Turn]
    settings: GenerationSettings
    prompt_tokens: int  # what usage reports: the tokens of the question and its history
    loop: asyncio.AbstractEventLoop
    stream: bool = True  # whether it wants its text piece by piece ("delta" events) or only when done
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    engine: "BatchEngine | None" = None  # set when admitted
    released: bool = False  # its slot was given back

    def cancel(self) -> None:
        """The client left: stop generating it at the next token and free its slot now."""
        self.cancelled.set()
        if self.engine is not None:
            self.engine.release(self)

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share a generate() call."""
        if self.settings.seed is not None:
            return ("seeded", id(self))
        if self.settings.temperature == 0:
            return ("greedy",)
        return ("sampled", self.settings.temperature, self.settings.top_p)

    def send(self, kind: str, value: Any) -> None:
        deliver([(self, kind, value)])


def deliver(events: list[tuple[Job, str, Any]]) -> None:
    """Hand events to their jobs' event loops: one wake-up per loop for a whole decoding step, not one per
    row (on a small machine the event loop's wake-ups otherwise take CPU from generation)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, str, Any]]] = {}
    for event in events:
        by_loop.setdefault(event[0].loop, []).append(event)
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: the server is stopping
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(events: list[tuple[Job, str, Any]]) -> None:
    for job, kind, value in events:
        job.events.put_nowait((kind, value))


class _Row:
    """One row's tokens and the text streamed so far; its events go to `outbox`."""

    def __init__(self, job: Job, tokenizer: Any, outbox: list[tuple[Job, str, Any]]):
        self.job = job
        self.tokenizer = tokenizer
        self.outbox = outbox
        self.tokens: list[int] = []
        self.sent = ""
        self.finished = False

    def add(self, token: int, eos: int) -> None:
        if self.finished:
            return
        if self.job.cancelled.is_set():
            return self.finish("cancelled")
        if token == eos:
            return self.finish("stop")
        self.tokens.append(token)
        if self.job.stream:  # (a whole-answer request is decoded once, when it ends)
            text = self.text()
            if not text.endswith(INCOMPLETE_CHARACTER) and text.startswith(self.sent) and len(text) > len(self.sent):
                self.outbox.append((self.job, "delta", text[len(self.sent):]))
                self.sent = text
        if len(self.tokens) >= self.job.settings.max_new_tokens:
            self.finish("length")

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True).strip()

    def finish(self, reason: str) -> None:
        """Answer the request now: its client need not wait for the longest row of the batch."""
        self.finished = True
        text = self.text()
        if self.job.stream and text.startswith(self.sent) and len(text) > len(self.sent):
            self.outbox.append((self.job, "delta", text[len(self.sent):]))
        self.outbox.append((self.job, "done", Completion(text, self.job.prompt_tokens, len(self.tokens), reason)))


class _RowControl(BaseStreamer, StoppingCriteria):
    """generate()'s streamer (tokens to rows) and stopping criterion (which rows are done) in one."""

    def __init__(self, jobs: Sequence[Job], tokenizer: Any):
        self.outbox: list[tuple[Job, str, Any]] = []
        self.rows = [_Row(job, tokenizer, self.outbox) for job in jobs]
        self.eos = tokenizer.eos_token_id
        self.prompt_length = 0

    def put(self, value: torch.Tensor) -> None:
        if value.ndim == 2:  # the left-padded prompts, pushed once before the first step
            self.prompt_length = value.shape[1]
            return
        for row, token in zip(self.rows, value.tolist()):
            row.add(int(token), self.eos)
        self._flush()

    def end(self) -> None:
        for row in self.rows:
            if not row.finished:
                row.finish("length")
        self._flush()

    def _flush(self) -> None:
        if self.outbox:
            deliver(self.outbox[:])
            self.outbox.clear()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = [row.finished or row.job.cancelled.is_set() or generated >= row.job.settings.max_new_tokens
                for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class BatchEngine:
    """The model's worker thread, its queue, and the slots that bound how many requests are admitted."""

    def __init__(self, model: Any, max_batch: int, wait_s: float, max_pending: int,
                 on_batch: Callable[[int], None] | None = None):
        self.model = model
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.on_batch = on_batch or (lambda size: None)
        self.pending = 0
        self._slots = threading.Lock()
        self._incoming: queue.Queue[Job | None] = queue.Queue()
        self._held: deque[Job] = deque()  # taken from the queue, waiting for a batch of their kind
        self._closing = False
        self._last_concurrent = float("-inf")  # when two or more requests were last in flight together
        self._thread = threading.Thread(target=self._run, name="mullama-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._incoming.put(None)
        self._thread.join(timeout)

    def admit(self, job: Job) -> bool:
        """Queue the job if a slot is free; False when max_pending requests are already in flight."""
        with self._slots:
            if self.pending >= self.max_pending:
                return False
            self.pending += 1
            if self.pending > 1:
                self._last_concurrent = time.monotonic()
        job.engine = self
        self._incoming.put(job)
        return True

    def release(self, job: Job) -> None:
        with self._slots:
            if not job.released:
                job.released = True
                self.pending -= 1

    # ------------------------------------------------------------------ worker
    def _first(self) -> Job | None:
        while True:
            job = self._held.popleft() if self._held else (None if self._closing else self._incoming.get())
            if job is None:
                return None
            if not job.cancelled.is_set():
                return job
            self.release(job)

    def _next_batch(self) -> list[Job] | None:
        first = self._first()
        if first is None:
            return None
        key = first.batch_key()
        batch = [first]
        for job in list(self._held):
            if len(batch) < self.max_batch and job.batch_key() == key:
                self._held.remove(job)
                batch.append(job)
        busy = time.monotonic() - self._last_concurrent < IDLE_AFTER_S
        deadline = time.monotonic() + (self.wait_s if busy else 0.0)
        while len(batch) < self.max_batch and not self._closing:
            try:  # what is already queued joins at once; then wait out the rest of the window
                job = self._incoming.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._closing = True
            elif job.batch_key() == key and len(batch) < self.max_batch:
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch: list[Job] = []
            try:
                upcoming = self._next_batch()
                if upcoming is None:  # stopping
                    return
                batch = upcoming
                self._serve(batch)
            except Exception:  # never let the worker die: a dead worker would leave every request waiting
                log.exception("generation failed")
                for job in batch:
                    job.send("error", "generation failed; the server's log has the details")
                    self.release(job)

    def _serve(self, batch: list[Job]) -> None:
        for job in batch:
            if job.cancelled.is_set():  # its client left while it waited
                self.release(job)
        batch = [job for job in batch if not job.cancelled.is_set()]
        if not batch:
            return
        self.on_batch(len(batch))
        self._generate(batch)
        for job in batch:
            self.release(job)  # (a finished row's slot frees here, with its batch's memory)
        if len(batch) > 1:  # its clients are about to ask again (a batch may last longer than IDLE_AFTER_S)
            self._last_concurrent = time.monotonic()

    def _generate(self, batch: list[Job]) -> None:
        settings = batch[0].settings
        control = _RowControl(batch, self.model.tokenizer)
        self.model.generate_rows(
            np.stack([job.stack for job in batch]), [job.question for job in batch], [job.history for job in batch],
            control, control, temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed,
            max_new_tokens=max(job.settings.max_new_tokens for job in batch))
        control.end()
