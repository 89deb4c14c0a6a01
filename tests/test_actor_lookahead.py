"""An extraction actor's audio is bounded by its look-ahead.

A Ray partition task carries the clips' URLs only: no audio enters Ray's object store, each actor fetches
its clips from the bucket itself (mullama/extract/reader.py) and only as far as its look-ahead reaches:
`PipelineSettings.lookahead` clips fetched or decoded ahead of the model. Shown on the pipeline an actor runs
(threads, as in an actor) with a slow model, so the reader fills its look-ahead and is seen to stop there.
"""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest

from mullama.data.manifest import ClipSource
from mullama.encoder_identity import EncoderIdentity
from mullama.extract.pipeline import PartitionPipeline, PipelineSettings
from mullama.extract.plan import PartitionTask
from mullama.extract.reader import DecodedClip, DecodeSettings, decode_clip
from mullama.store import FeatureStore, StoreSettings
from tests.helpers import write_tone

RATE = 24000
DECODE = DecodeSettings(sample_rate=RATE, window_samples=RATE * 60, min_last_samples=RATE, min_samples=400)
IDENTITY = EncoderIdentity("synthetic", "c" * 64, "w" * 64, RATE, 3, 8)


class Audit:
    """Clips fetched and clips handed to the model so far, and the most ever fetched ahead of the model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetched = self.encoded = self.peak = 0

    def fetch(self) -> None:
        with self.lock:
            self.fetched += 1
            self.peak = max(self.peak, self.fetched - self.encoded)

    def encode(self, clips: int) -> None:
        with self.lock:
            self.encoded += clips


AUDIT = Audit()


def audited_decoder(source: ClipSource, settings: DecodeSettings) -> DecodedClip:
    """The reader's decoder, counting each clip as it is fetched (a module-level function, as decoders are)."""
    AUDIT.fetch()
    return decode_clip(source, settings)


class SlowModel:
    """An encoder that takes 30 ms per batch, so the reader runs ahead of it as far as it may."""

    identity, precision, sample_rate = IDENTITY, "fp32", RATE

    def encode(self, windows: list[np.ndarray]) -> np.ndarray:
        AUDIT.encode(len(windows))  # one window per clip here
        time.sleep(0.03)
        return np.ones((len(windows), IDENTITY.hidden_states, IDENTITY.hidden_size), dtype=np.float32)


@pytest.mark.parametrize("threads,batch", [(1, 1), (2, 1), (2, 4)])
def test_an_actor_fetches_no_further_than_its_lookahead(tmp_path, threads, batch):
    global AUDIT
    AUDIT = Audit()
    sources = [ClipSource(f"c{n:02d}", str(write_tone(tmp_path / f"c{n:02d}.wav", 1.0, RATE, 200.0 + n, seed=n)))
               for n in range(24)]
    store = FeatureStore.create(str(tmp_path / "store"), IDENTITY, StoreSettings(precision="fp32"))
    settings = PipelineSettings(DECODE, batch, threads, processes=False, decoder=audited_decoder)
    report = PartitionPipeline(SlowModel(), store, settings).process(PartitionTask(0, sources, "run"))
    assert [outcome.ok for outcome in report.outcomes] == [True] * 24
    assert AUDIT.fetched == AUDIT.encoded == 24
    # Equal-length clips: the model takes each batch as soon as it is full, so what waits is the reader's.
    assert AUDIT.peak <= settings.lookahead + batch - 1, (AUDIT.peak, settings.lookahead)
    # Not a vacuous bound: the slow model lets the reader fill its look-ahead (less the clip just taken).
    assert AUDIT.peak >= settings.lookahead - 1, (AUDIT.peak, settings.lookahead)


def test_a_partition_task_carries_no_audio(tmp_path):
    """What the driver puts in Ray's object store per partition: the clips' URLs, not their bytes."""
    sources = [ClipSource(f"c{n:03d}", f"s3://bucket/audio/c{n:03d}.wav") for n in range(256)]
    task = PartitionTask(0, sources, "p-20261203T000000-0123456789")
    assert len(pickle.dumps(task)) < 100 * len(sources)  # a 30-s clip is ~1 MB of audio; a URL ~40 bytes
