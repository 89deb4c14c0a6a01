"""Image and video extraction, side by side in one run: rates per modality and what the cache costs per item.

For ViT (images) and ViViT (videos), at the published shapes with random weights (or tiny ones):
  decode only     file -> pixel tensor in the reader (Pillow or PyAV, then the image processor)
  model only      pre-decoded tensors through the encoder in batches (the ceiling)
  end to end      `run_local` from the files: decode workers + encoder + store commits
  cached read     one item's matrix read back from the store: what each training step pays instead of
                  the encoder (the released code ran both encoders inside every step)
and per item: bytes in the store, the float32 matrix in memory, the pixel tensor in flight between reader
and encoder, and the reduced vector the bridge consumes after its token aggregator.

    python benchmarks/vision_extract.py --size base --images 16 --videos 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mullama.data.manifest import ClipSource
from mullama.extract.config import ExtractConfig
from mullama.extract.runner import run_local
from mullama.extract.vision import VisionSpec, decode_visual
from mullama.fixtures.vision import write_random_encoder
from mullama.store import FeatureStore


def make_images(folder: Path, count: int) -> None:
    """640 x 480 JPEGs of smooth colour fields with noise: decode and resize cost what photos cost."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    for number in range(count):
        base = np.stack([np.sin(x / rng.uniform(20, 90)), np.cos(y / rng.uniform(20, 90)), np.sin((x + y) / 70)], -1)
        picture = ((base + 1) * 100 + rng.integers(0, 50, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(picture).save(folder / f"image{number:03d}.jpg", quality=90)


def make_videos(folder: Path, count: int, seconds: float, rate: int = 25) -> None:
    """640 x 360 H.264 videos of a cursor moving over a fixed background."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for number in range(count):
        background = rng.integers(0, 160, (360, 640, 3), dtype=np.uint8)
        frames = int(seconds * rate)
        with av.open(str(folder / f"video{number:03d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
            for index in range(frames):
                picture = background.copy()
                column = index * 630 // frames
                picture[:, column:column + 10] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def measure(kind: str, folder: Path, files: Path, work: Path, batch_size: int) -> dict:
    spec = VisionSpec.read(folder, kind)
    settings = spec.decode_settings()
    paths = sorted(files.iterdir())
    started = time.perf_counter()
    decoded = [decode_visual(ClipSource(p.name, str(p)), settings) for p in paths]
    decode_s = (time.perf_counter() - started) / len(paths)
    encoder = spec.load("cpu")
    tensors = [d.windows[0] for d in decoded]
    encoder.encode(tensors[:1])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        encoder.encode(tensors[start:start + batch_size])
    model_rate = len(tensors) / (time.perf_counter() - started)
    store = work / f"{kind}-store"
    started = time.perf_counter()
    summary = run_local(ExtractConfig(input=str(files), store=str(store), batch_size=batch_size, workers=1,
                                      progress=False, **{kind: str(folder)}), encoder=encoder)
    end_to_end = summary.ok / (time.perf_counter() - started)
    opened = FeatureStore.open(str(store))
    ids = opened.clip_ids()
    started = time.perf_counter()
    for clip_id in ids:
        FeatureStore.open(str(store)).get([clip_id])  # a cold reader, as a training step's loader would be
    read_s = (time.perf_counter() - started) / len(ids)
    tokens, width = opened.stack_shape
    stored = sum(p.stat().st_size for p in (store / "partitions").rglob("*") if p.is_file() and "/c/" in str(p))
    return {
        "kind": kind, "items": len(ids), "tokens": tokens, "width": width,
        "decode_s_per_item": round(decode_s, 4), "model_items_per_s": round(model_rate, 3),
        "end_to_end_items_per_s": round(end_to_end, 3), "encode_s_per_item": round(1 / model_rate, 4),
        "cached_read_s_per_item": round(read_s, 5), "encode_over_read": round((1 / model_rate) / read_s, 1),
        "store_bytes_per_item": stored // len(ids), "matrix_fp32_bytes": tokens * width * 4,
        "pixels_in_flight_bytes": int(tensors[0].nbytes), "bridge_input_bytes": width * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--video-seconds", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        make_images(work / "images", args.images)
        make_videos(work / "videos", args.videos, args.video_seconds)
        rows = []
        for kind, files in (("vit", work / "images"), ("vivit", work / "videos")):
            folder = write_random_encoder(kind, work / kind, args.size, seed=0)
            rows.append(measure(kind, folder, files, work, args.batch_size))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
