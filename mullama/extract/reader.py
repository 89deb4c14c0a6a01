"""Reader stage: decode clips into encoder-ready windows in worker processes, ahead of the model.

Decoding runs in a process pool with a bounded look-ahead, so the model never waits for audio and
decoded audio never piles up in memory. A clip that cannot be decoded comes back with a reason.
A worker that crashes (a decoder bug on a hostile file) fails only the clip that crashed it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import multiprocessing
import os
import stat
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mullama.data.manifest import ClipSource, is_url
from mullama.extract.audio import AudioError, content_hash, decode_audio, fetch_url, load_audio, split_windows


@dataclass(frozen=True)
class DecodeSettings:
    sample_rate: int
    window_samples: int
    min_last_samples: int
    min_samples: int


@dataclass
class DecodedClip:
    source: ClipSource
    content_hash: str = ""
    duration: float = 0.0
    windows: list[np.ndarray] = field(default_factory=list)
    reason: str = ""
    size: int = -1  # of the local file as read (-1 for URLs and unread files)
    mtime_ns: int = -1

    @property
    def ok(self) -> bool:
        return not self.reason


def check_regular_file(path: str) -> os.stat_result:
    """Refuse what is not an ordinary file before hashing it: /dev/zero or a FIFO would never end."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise AudioError("missing", f"{path} does not exist") from None
    if not stat.S_ISREG(status.st_mode):
        raise AudioError("not_audio", f"{path} is not a regular file")
    return status


@dataclass
class OpenedSource:
    """What to decode (a local path, or the bytes fetched from a URL) and the file's identity as read."""

    file: str | io.BytesIO
    digest: str
    size: int = -1
    mtime_ns: int = -1


def open_source(source: ClipSource) -> OpenedSource:
    """Fetch or stat and hash one input; raises AudioError for what is missing, empty or not a file."""
    if is_url(source.path):
        data = fetch_url(source.path)
        if not data:
            raise AudioError("empty", f"{source.path} is an empty file")
        return OpenedSource(io.BytesIO(data), hashlib.sha256(data).hexdigest())
    status = check_regular_file(source.path)  # taken before hashing: a later change shows as a new mtime
    return OpenedSource(source.path, content_hash(source.path), status.st_size, status.st_mtime_ns)


def decode_item(source: ClipSource, decode: Callable[[OpenedSource], tuple[list[np.ndarray], float]]) -> DecodedClip:
    """Open `source` and turn it into encoder inputs with `decode` (-> (windows, duration in seconds)); never
    raises for a bad input: the reason is returned instead."""
    if source.problem:
        return DecodedClip(source, reason=source.problem)
    opened = OpenedSource("", "")
    try:
        opened = open_source(source)
        if opened.size == 0:
            raise AudioError("empty", f"{source.path} is an empty file")
        windows, duration = decode(opened)
    except AudioError as exc:
        return DecodedClip(source, reason=f"{exc.reason}: {exc.detail}", size=opened.size, mtime_ns=opened.mtime_ns)
    except OSError as exc:
        return DecodedClip(source, reason=f"unreadable: {source.path}: {exc}", size=opened.size,
                           mtime_ns=opened.mtime_ns)
    except Exception as exc:  # a decoder bug or a header that asks for absurd memory fails this item only
        return DecodedClip(source, reason=f"unreadable: {source.path}: {type(exc).__name__}: {exc}",
                           size=opened.size, mtime_ns=opened.mtime_ns)
    return DecodedClip(source, opened.digest, duration, windows, size=opened.size, mtime_ns=opened.mtime_ns)


def decode_clip(source: ClipSource, settings: DecodeSettings) -> DecodedClip:
    """Decode one audio clip into windows at the encoder's rate."""
    def windows(opened: OpenedSource) -> tuple[list[np.ndarray], float]:
        if isinstance(opened.file, io.BytesIO):
            audio = decode_audio(opened.file, source.path, settings.sample_rate, settings.min_samples)
        else:
            audio = load_audio(opened.file, settings.sample_rate, settings.min_samples)
        return (split_windows(audio, settings.window_samples, settings.min_last_samples),
                audio.shape[0] / settings.sample_rate)

    return decode_item(source, windows)


Decoder = Callable[[ClipSource, Any], DecodedClip]


def decode_stream(sources: Iterable[ClipSource], settings: Any, workers: int,
                  lookahead: int, processes: bool = True, decoder: Decoder = decode_clip) -> Iterator[DecodedClip]:
    """Decoded clips in input order; at most `lookahead` clips decoded ahead of the consumer.

    `processes=False` decodes in threads (libsndfile, soxr and hashlib release the GIL), for hosts
    such as Ray actors where forking helper processes is unwelcome. `decoder` must be a module-level
    function (worker processes import it by name).
    """
    if workers <= 0:
        for source in sources:
            yield decoder(source, settings)
        return
    pending_sources = iter(sources)
    context = multiprocessing.get_context("spawn")
    executor: Executor = (ProcessPoolExecutor(workers, mp_context=context) if processes
                          else ThreadPoolExecutor(workers, thread_name_prefix="decode"))
    queue: collections.deque[tuple[ClipSource, Future]] = collections.deque()
    unsubmitted: collections.deque[ClipSource] = collections.deque()
    try:
        while True:
            try:
                while len(queue) < max(lookahead, 1):
                    source = unsubmitted.popleft() if unsubmitted else next(pending_sources, None)
                    if source is None:
                        break
                    try:
                        queue.append((source, executor.submit(decoder, source, settings)))
                    except BrokenProcessPool:
                        unsubmitted.appendleft(source)  # the pool broke under an earlier clip
                        raise
                if not queue:
                    return
                source, future = queue[0]
                decoded = future.result()
                queue.popleft()
            except BrokenProcessPool:
                executor.shutdown(cancel_futures=True)
                executor = ProcessPoolExecutor(workers, mp_context=context)
                retry = [s for s, _ in queue] + list(unsubmitted)
                queue.clear()
                unsubmitted.clear()
                yield from _decode_isolated(retry, settings, context, decoder)
                continue
            yield decoded
    finally:
        executor.shutdown(cancel_futures=True)


def _decode_isolated(sources: list[ClipSource], settings: Any, context,
                     decoder: Decoder) -> Iterator[DecodedClip]:
    """After a worker crash: decode each clip in a fresh single-use process to find the culprit."""
    for source in sources:
        with ProcessPoolExecutor(1, mp_context=context) as single:
            try:
                yield single.submit(decoder, source, settings).result()
            except BrokenProcessPool:
                yield DecodedClip(source, reason=f"decoder_crashed: {source.path} crashed the audio decoder")
