import os
import time

import pytest

from mullama.data.manifest import ClipSource
from mullama.extract import reader
from mullama.extract.reader import DecodeSettings, decode_clip, decode_stream
from tests.crashing_decoder import decode_or_crash
from tests.helpers import write_tone

SETTINGS = DecodeSettings(sample_rate=24000, window_samples=24000 * 60, min_last_samples=24000, min_samples=400)


@pytest.fixture
def sources(tmp_path):
    paths = [write_tone(tmp_path / f"c{i}.wav", 0.5, 24000, 200.0 + 20 * i) for i in range(8)]
    return [ClipSource("crash-5" if i == 5 else f"c{i}", str(path)) for i, path in enumerate(paths)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("consumer_sleep", [0.0, 0.4])
def test_a_crashing_worker_fails_only_its_clip(sources, consumer_sleep):
    """A slow consumer makes the pool break while the look-ahead is being refilled, a fast one while waiting."""
    decoded = []
    for clip in decode_stream(sources, SETTINGS, workers=2, lookahead=4, decoder=decode_or_crash):
        decoded.append(clip)
        time.sleep(consumer_sleep)
    assert [clip.source.clip_id for clip in decoded] == [source.clip_id for source in sources]
    assert [clip.ok for clip in decoded] == [True] * 5 + [False] + [True] * 2
    assert decoded[5].reason.startswith("decoder_crashed")


def test_special_files_missing_files_and_decoder_bugs_fail_one_clip(tmp_path, sources, monkeypatch):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    assert decode_clip(ClipSource("fifo", str(fifo)), SETTINGS).reason.startswith("not_audio")
    assert decode_clip(ClipSource("gone", str(tmp_path / "gone.wav")), SETTINGS).reason.startswith("missing")

    def absurd_header(*args, **kwargs):
        raise MemoryError("Unable to allocate 256 GiB")

    monkeypatch.setattr(reader, "load_audio", absurd_header)
    failed = decode_clip(sources[0], SETTINGS)
    assert failed.reason.startswith("unreadable") and "MemoryError" in failed.reason
