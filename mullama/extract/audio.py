"""Audio decoding for the encoder: soundfile decode -> mono -> soxr resample -> float32.

Every way a file can be unusable raises `AudioError` with a short reason code, so a batch job can
record the clip as failed and go on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np
import soundfile as sf
import soxr

from mullama.objectstore import storage_options

HASH_BLOCK = 1 << 20
# Uploads (`decode_upload`): a short file can declare hours of many-channel, high-rate audio, and decoding
# allocates 4 bytes per sample; samples are budgeted as stereo 96 kHz for the allowed duration.
MAX_UPLOAD_RATE = 384_000
MAX_UPLOAD_CHANNELS = 16
MAX_UPLOAD_SAMPLES_PER_SECOND = 2 * 96_000
# An MP3's frame count may be an estimate (VBR without a Xing header): a shortfall beyond 5 % is truncation.
MP3_FRAME_ESTIMATE = 0.95
# Leading bytes of the containers libsndfile decodes (WAV/RF64/W64, AIFF, AU, CAF, FLAC, Ogg, MP3).
AUDIO_SIGNATURES = (b"RIFF", b"RF64", b"BW64", b"riff", b"FORM", b".snd", b"caff", b"fLaC", b"OggS", b"ID3")


class AudioError(Exception):
    """A clip that cannot be encoded. `reason` is a machine-readable code: missing, empty, not_audio,
    unreadable (damaged or unsupported audio), non_finite or too_short."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def looks_like_audio(head: bytes) -> bool:
    """Whether the first bytes start an audio container; tells "not audio at all" from "damaged audio"."""
    mpeg_frame_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    return mpeg_frame_sync or head.startswith(AUDIO_SIGNATURES)


def decode_failure(head: bytes, name: str, exc: Exception) -> AudioError:
    """The error for a file libsndfile refused, told apart by its first bytes."""
    if looks_like_audio(head):
        return AudioError("unreadable", f"{name}: damaged or unsupported audio ({exc})")
    return AudioError("not_audio", f"{name}: not an audio file (no WAV, FLAC, Ogg, MP3 or AIFF header)")


def read_head(source: str | BinaryIO) -> bytes:
    """The first bytes of a file path or of an in-memory file (read from its start)."""
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return handle.read(4)
    source.seek(0)
    return source.read(4)


def probe(path: str | Path) -> AudioInfo:
    """Header-only read: duration and format without decoding the samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", f"{path} does not exist")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise decode_failure(read_head(str(path)), str(path), exc) from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames), str(info.format))


def content_hash(path: str | Path) -> str:
    """sha256 of the file bytes: identifies the audio independently of its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mean over channels, as MU-LLaMA does; (frames,) or (frames, channels) in, (frames,) out."""
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def fetch_url(url: str) -> bytes:
    """Whole object from any fsspec URL (s3://, gs://, https://...): audio kept off the workers' disks."""
    try:
        with fsspec.open(url, "rb", **storage_options(url)) as handle:  # retried with backoff on S3
            return handle.read()
    except FileNotFoundError:
        raise AudioError("missing", f"{url} does not exist") from None
    except Exception as exc:  # network and permission errors differ by backend
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise AudioError("unreadable", f"GET {url} failed after retries ({type(exc).__name__}: {cause})") from None


def load_audio(path: str | Path, target_rate: int, min_samples: int = 1) -> np.ndarray:
    """Decode a local file to mono float32 at `target_rate`; raise AudioError if it is unusable.

    `min_samples` is the encoder's receptive field: shorter audio gives no frame at all.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise AudioError("empty", f"{path} is an empty file")
    return decode_audio(str(path), str(path), target_rate, min_samples)


def decode_audio(source: str | BinaryIO, name: str, target_rate: int, min_samples: int = 1) -> np.ndarray:
    """Decode a path or an in-memory file; `name` is what error messages call it."""
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise decode_failure(read_head(source), name, exc) from None
    return prepared(samples, int(rate), name, target_rate, min_samples)


def prepared(samples: np.ndarray, rate: int, name: str, target_rate: int, min_samples: int = 1) -> np.ndarray:
    """Decoded samples -> mono float32 at `target_rate`, checked (empty, non-finite, too short)."""
    if samples.size == 0:
        raise AudioError("empty", f"{name} holds no audio samples")
    mono = to_mono(samples)
    if not np.isfinite(mono).all():
        raise AudioError("non_finite", f"{name} contains NaN or infinite samples")
    audio = resample(mono, rate, target_rate)
    if audio.shape[0] < min_samples:
        seconds = audio.shape[0] / target_rate
        raise AudioError(
            "too_short", f"{name} lasts {seconds:.4f} s, shorter than the encoder's receptive field "
            f"({min_samples} samples at {target_rate} Hz)"
        )
    return np.ascontiguousarray(audio)


def split_windows(audio: np.ndarray, window_samples: int, min_last_samples: int) -> list[np.ndarray]:
    """Cut audio into consecutive windows of `window_samples`.

    A trailing window shorter than `min_last_samples` is dropped (the first window is always kept),
    so a few seconds of tail do not weigh as much as a full window in the clip mean.
    """
    if window_samples <= 0:
        return [audio]
    windows = [audio[start:start + window_samples] for start in range(0, audio.shape[0], window_samples)]
    if len(windows) > 1 and windows[-1].shape[0] < min_last_samples:
        windows.pop()
    return windows


def declared_wav_bytes(data: bytes) -> int | None:
    """The byte count a RIFF/WAVE file's header promises (up to the end of its data chunk), or None when
    it does not say (not a WAV, or a streamed WAV with a placeholder size). libsndfile reads a truncated WAV
    without complaint, giving fewer samples than were sent."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4:offset + 8], "little")
        if data[offset:offset + 4] == b"data":
            return None if size in (0, 0xFFFFFFFF) else offset + 8 + size
        offset += 8 + size + (size & 1)
    return offset


def decode_upload(data: bytes, name: str, target_rate: int, min_samples: int, max_seconds: float) -> np.ndarray:
    """Decode audio sent in a request: like `decode_audio`, and refused before decoding when it is longer
    than `max_seconds`, and after when it is shorter than its own header says (truncated in transit)."""
    if not data:
        raise AudioError("empty", f"{name} holds no bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise decode_failure(data[:4], name, exc) from None
    if not 0 < info.samplerate <= MAX_UPLOAD_RATE or not 0 < info.channels <= MAX_UPLOAD_CHANNELS:
        raise AudioError("unreadable", f"{name} declares {info.samplerate} Hz and {info.channels} channels; "
                                       f"send at most {MAX_UPLOAD_RATE} Hz and {MAX_UPLOAD_CHANNELS} channels")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise AudioError("too_long", f"{name} lasts {seconds:.1f} s, longer than this server's limit of "
                                     f"{max_seconds:g} s")
    if info.frames * info.channels > max_seconds * MAX_UPLOAD_SAMPLES_PER_SECOND:
        raise AudioError("too_long", f"{name} holds {info.frames * info.channels} samples ({info.channels} channels "
                                     f"at {info.samplerate} Hz), more than this server decodes for {max_seconds:g} s")
    declared = declared_wav_bytes(data)
    if declared is not None and declared > len(data):
        raise AudioError("truncated", f"{name} is truncated: its header promises {declared} bytes, {len(data)} came")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError("truncated", f"{name} is damaged or truncated ({exc})") from None
    if samples.shape[0] < info.frames * (MP3_FRAME_ESTIMATE if info.format == "MP3" else 1.0):
        raise AudioError("truncated", f"{name} is truncated: {samples.shape[0]} of its {info.frames} frames decode")
    return prepared(samples, int(rate), name, target_rate, min_samples)
