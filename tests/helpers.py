"""Helpers shared by the tests: synthetic audio, images and videos, and store inspection."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import av
import numpy as np
import soundfile as sf
from PIL import Image


def tone(seconds: float, rate: int, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a little noise: cheap, deterministic, not silence."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in (1, 2, 3)) * 0.3
    wave = wave + 0.01 * rng.standard_normal(t.shape)
    wave = wave.astype(np.float32)
    return np.stack([wave, wave * 0.8], axis=1) if channels == 2 else wave


def write_tone(path: Path, seconds: float, rate: int = 44100, freq: float = 220.0, channels: int = 1,
               seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate, freq, channels, seed), rate)
    return path


def data_committed(commits: Path) -> bool:
    """A partition of clips (not the store's special silence partition) has been committed."""
    return commits.is_dir() and any("special" not in p.name for p in commits.glob("*.json"))


def committed_clip_rows(store) -> int:
    """Catalog rows over every commit, the special silence clip aside: a duplicate would count twice."""
    from mullama.store import SILENCE_CLIP

    return sum(r.clip_id != SILENCE_CLIP for commit in store.commits() for r in commit.clips)


def tone_store(root: Path, mert: Path, count: int, base_freq: float = 150.0) -> list[str]:
    """`count` one-second tones extracted into root/store; their clip ids."""
    from mullama.extract.config import ExtractConfig
    from mullama.extract.runner import run_local
    from mullama.store import FeatureStore

    for number in range(count):
        write_tone(root / "audio" / f"c{number}.wav", 1.0, 24000, base_freq * (number + 1), seed=number)
    run_local(ExtractConfig(input=str(root / "audio"), mert=str(mert), store=str(root / "store"), workers=0,
                            progress=False))
    return FeatureStore.open(str(root / "store")).clip_ids()


def short_clips(folder: Path, count: int) -> Path:
    """`count` short tones of distinct lengths and pitches (one window each), in `folder`."""
    for number in range(count):
        write_tone(folder / f"c{number:02d}.wav", 0.5 + 0.02 * number, 24000, 110.0 + 10 * number, seed=number)
    return folder


def race(*actions: Callable[[], object]) -> list[object]:
    """Run the actions in threads released together; each one's result, or the exception it raised."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[object] = [None] * len(actions)

    def run(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = actions[index]()
        except Exception as exc:  # noqa: BLE001 - the caller inspects what each racer met
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def assert_one_creator_wins(url: str) -> None:
    """Two writers of different encoders create the store at `url` at once: one wins, the other is refused."""
    from mullama.encoder_identity import EncoderIdentity
    from mullama.errors import MullamaError
    from mullama.store import FeatureStore, StoreSettings

    encoders = [EncoderIdentity(name, hashes[0] * 64, hashes[1] * 64, 24000, 3, 8)
                for name, hashes in (("enc", "cw"), ("other", "dv"))]
    outcomes = race(*[lambda e=encoder: FeatureStore.open_or_create(url, e, StoreSettings()) for encoder in encoders])
    refused = [o for o in outcomes if isinstance(o, MullamaError)]
    assert len(refused) == 1 and "new store path" in str(refused[0]), outcomes
    assert sum(isinstance(o, FeatureStore) for o in outcomes) == 1, outcomes


def synthetic_store(url: str, clips: int, per_partition: int = 100, states: int = 5, size: int = 32,
                    clusters: int = 8, seed: int = 0, start: int = 0, weights_hash: str = "w" * 64):
    """A store of clustered random stacks written without audio or an encoder (fast, any size); clip i is
    `clip{i:05d}` of cluster i % clusters, whose source is `src/{cluster}.wav`. Adds to an existing store."""
    from mullama.encoder_identity import EncoderIdentity
    from mullama.store import ClipResult, FeatureStore, StoreSettings

    encoder = EncoderIdentity("synthetic", "c" * 64, weights_hash, 24000, states, size)
    store = FeatureStore.open_or_create(url, encoder, StoreSettings(precision="fp32"))
    centres = np.random.default_rng(1000 + clusters).normal(size=(clusters, states, size))
    rng = np.random.default_rng(seed)
    for low in range(start, start + clips, per_partition):
        results = []
        for number in range(low, min(start + clips, low + per_partition)):
            stack = centres[number % clusters] + 0.6 * rng.normal(size=(states, size))
            results.append(ClipResult(f"clip{number:05d}", f"src/{number % clusters}.wav", "h", 3.0,
                                      stack[None].astype(np.float32)))
        store.write_partition(results, precision="fp32")
    return store


def write_video(path: Path, frames: int, seed: int, size: tuple[int, int] = (48, 64), rate: int = 8) -> None:
    """A video whose frames all differ (a bright bar moving across noise), so frame choice shows in features."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 120, size + (3,), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"qp": "0"}
        for number in range(frames):
            picture = background.copy()
            column = number * size[1] // frames
            picture[:, column:column + 6] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path: Path, seed: int, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)).save(path, "PNG")
