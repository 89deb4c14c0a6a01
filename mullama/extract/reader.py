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
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from mullama.data.manifest import ClipSource
from mullama.extract.audio import AudioError, content_hash, decode_audio, fetch_url, is_url, load_audio, split_windows


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

    @property
    def ok(self) -> bool:
        return not self.reason


def decode_clip(source: ClipSource, settings: DecodeSettings) -> DecodedClip:
    """Decode one clip; never raises for bad audio (the reason is returned instead)."""
    try:
        if is_url(source.path):
            data = fetch_url(source.path)
            if not data:
                raise AudioError("empty", f"{source.path} is an empty file")
            digest = hashlib.sha256(data).hexdigest()
            audio = decode_audio(io.BytesIO(data), source.path, settings.sample_rate, settings.min_samples)
        else:
            digest = content_hash(source.path)
            audio = load_audio(source.path, settings.sample_rate, settings.min_samples)
    except AudioError as exc:
        return DecodedClip(source, reason=f"{exc.reason}: {exc.detail}")
    except OSError as exc:
        return DecodedClip(source, reason=f"unreadable: {source.path}: {exc}")
    windows = split_windows(audio, settings.window_samples, settings.min_last_samples)
    return DecodedClip(source, digest, audio.shape[0] / settings.sample_rate, windows)


def decode_stream(sources: Iterable[ClipSource], settings: DecodeSettings, workers: int,
                  lookahead: int, processes: bool = True) -> Iterator[DecodedClip]:
    """Decoded clips in input order; at most `lookahead` clips decoded ahead of the consumer.

    `processes=False` decodes in threads (libsndfile, soxr and hashlib release the GIL), for hosts
    such as Ray actors where forking helper processes is unwelcome.
    """
    if workers <= 0:
        for source in sources:
            yield decode_clip(source, settings)
        return
    pending_sources = iter(sources)
    context = multiprocessing.get_context("spawn")
    executor: Executor = (ProcessPoolExecutor(workers, mp_context=context) if processes
                          else ThreadPoolExecutor(workers, thread_name_prefix="decode"))
    queue: collections.deque[tuple[ClipSource, Future]] = collections.deque()
    try:
        while True:
            while len(queue) < max(lookahead, 1):
                source = next(pending_sources, None)
                if source is None:
                    break
                queue.append((source, executor.submit(decode_clip, source, settings)))
            if not queue:
                return
            source, future = queue.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                executor.shutdown(cancel_futures=True)
                executor = ProcessPoolExecutor(workers, mp_context=context)
                retry = [source] + [s for s, _ in queue]
                queue.clear()
                for clip in _decode_isolated(retry, settings, context):
                    yield clip
    finally:
        executor.shutdown(cancel_futures=True)


def _decode_isolated(sources: list[ClipSource], settings: DecodeSettings, context) -> Iterator[DecodedClip]:
    """After a worker crash: decode each clip in a fresh single-use process to find the culprit."""
    for source in sources:
        with ProcessPoolExecutor(1, mp_context=context) as single:
            try:
                yield single.submit(decode_clip, source, settings).result()
            except BrokenProcessPool:
                yield DecodedClip(source, reason=f"decoder_crashed: {source.path} crashed the audio decoder")
