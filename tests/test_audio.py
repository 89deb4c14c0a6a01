import io

import numpy as np
import pytest
import soundfile as sf

from mullama.extract.audio import AudioError, decode_audio, load_audio, probe, split_windows
from tests.helpers import tone, write_tone


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_decodes_every_format_to_mono_at_target_rate(tmp_path, fmt, subtype):
    path = tmp_path / f"clip.{fmt.lower()}"
    data = tone(2.0, 44100, 330.0, channels=2)
    with sf.SoundFile(str(path), "w", 44100, 2, subtype=subtype, format=fmt) as handle:
        for start in range(0, len(data), 8192):
            handle.write(data[start:start + 8192])
    audio = load_audio(path, 24000)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(audio.shape[0] - 48000) < 2400  # lossy codecs add a little padding
    assert probe(path).channels == 2 and abs(probe(path).duration - 2.0) < 0.1


def test_mono_is_channel_mean_and_resampled_length_is_exact(tmp_path):
    left = tone(1.0, 48000, 200.0)
    right = tone(1.0, 48000, 300.0, seed=1)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 48000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 48000), (left + right) / 2, atol=1e-6)
    assert load_audio(path, 24000).shape == (24000,)


def test_probe_reads_duration_from_header(tmp_path):
    path = write_tone(tmp_path / "a.flac", 3.5, 32000)
    info = probe(path)
    assert info.sample_rate == 32000 and info.frames == 112000 and info.duration == pytest.approx(3.5)


@pytest.mark.parametrize("maker,reason", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("this is not audio at all\n" * 20), "not_audio"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40), "unreadable"),
    (lambda p: sf.write(str(p), np.array([0.1, np.nan, 0.2] * 4000, dtype=np.float32), 24000, subtype="FLOAT"),
     "non_finite"),
    (lambda p: sf.write(str(p), np.zeros(100, dtype=np.float32), 24000), "too_short"),
    (lambda p: sf.write(str(p), np.zeros((0, 1), dtype=np.float32), 24000), "empty"),
])
def test_bad_input_raises_typed_error(tmp_path, maker, reason):
    path = tmp_path / "bad.wav"
    maker(path)
    with pytest.raises(AudioError) as caught:
        load_audio(path, 24000, min_samples=400)
    assert caught.value.reason == reason
    assert str(path) in str(caught.value)


def test_not_audio_is_told_from_damaged_audio_on_disk_and_in_memory(tmp_path):
    flac = write_tone(tmp_path / "a.flac", 1.0, 24000).read_bytes()
    text = tmp_path / "notes.wav"
    text.write_text("a text file named like audio\n" * 10)
    with pytest.raises(AudioError) as caught:
        probe(text)
    assert caught.value.reason == "not_audio"
    for data, reason in [(b"<html>" + b"x" * 500, "not_audio"), (flac[:60], "unreadable")]:
        with pytest.raises(AudioError) as caught:
            decode_audio(io.BytesIO(data), "s3://bucket/clip", 24000)
        assert caught.value.reason == reason and "s3://bucket/clip" in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError) as caught:
        load_audio(tmp_path / "nope.wav", 24000)
    assert caught.value.reason == "missing"


def test_split_windows_drops_short_tail_but_keeps_first():
    audio = np.arange(250, dtype=np.float32)
    windows = split_windows(audio, 100, min_last_samples=60)
    assert [w.shape[0] for w in windows] == [100, 100]  # the 50-sample tail is dropped
    assert [w.shape[0] for w in split_windows(audio, 100, 40)] == [100, 100, 50]
    assert [w.shape[0] for w in split_windows(audio[:30], 100, 60)] == [30]
    np.testing.assert_array_equal(np.concatenate(split_windows(audio, 100, 1)), audio)
