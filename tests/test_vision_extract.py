"""Image and video stores: the same partition pipeline as audio, with ViT and ViViT as new encoder kinds.

The reference computes each item independently: Pillow and transformers' processor for images, every
frame decoded by PyAV and the evenly spaced ones picked here for videos, then the model's last layer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil, ViTModel, VivitImageProcessor, VivitModel

from mullama.encoder_identity import IMAGE, VIDEO
from mullama.extract.config import ExtractConfig
from mullama.extract.runner import run_local
from mullama.fixtures.vision import write_random_encoder
from mullama.store import SILENCE_CLIP, FeatureStore
from tests.helpers import write_image, write_video


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision-encoders")
    return {kind: write_random_encoder(kind, root / kind, "tiny", seed=3) for kind in ("vit", "vivit")}


def extract(input_path: Path, store: Path, workers: int = 0, **encoder: str) -> object:
    return run_local(ExtractConfig(input=str(input_path), store=str(store), workers=workers, batch_size=2,
                                   progress=False, partition_size=3, **encoder))


def reference_image(folder: Path, path: Path) -> np.ndarray:
    processor = ViTImageProcessorPil.from_pretrained(str(folder))
    model = ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[0].numpy()


def reference_video(folder: Path, path: Path) -> np.ndarray:
    processor = VivitImageProcessor.from_pretrained(str(folder))
    model = VivitModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    with av.open(str(path)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    wanted = [round(i * (len(every) - 1) / (model.config.num_frames - 1)) for i in range(model.config.num_frames)]
    pixels = processor([[every[i] for i in wanted]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).last_hidden_state[0].numpy()


def test_image_store_matches_the_model_on_each_image_and_records_bad_files(encoders, tmp_path):
    folder = tmp_path / "images"
    sizes = [(40, 50), (32, 32), (64, 20), (33, 47), (50, 40)]  # all resized to the model's 32 x 32
    for number, size in enumerate(sizes):
        write_image(folder / f"img{number}.png", number, size)
    Image.open(folder / "img1.png").save(folder / "img1.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    summary = extract(folder, tmp_path / "store", vit=str(encoders["vit"]))
    assert summary.exit_code == 1  # some items failed, the others are committed
    store = FeatureStore.open(str(tmp_path / "store"))
    assert (store.encoder.modality, store.encoder.kind, store.stack_shape) == (IMAGE, "vit", (5, 32))
    assert not store.settings.windowed and SILENCE_CLIP not in store  # no audio, so no silence stack
    reasons = {r.clip_id: r.reason.split(":")[0] for r in store.failures()}
    assert reasons == {"broken.png": "not_image", "empty.jpg": "empty"}
    assert len(store) == 6
    for clip_id in ("img0.png", "img2.png", "img1.jpg"):
        expected = reference_image(encoders["vit"], folder / clip_id).astype(np.float16)
        np.testing.assert_allclose(store.get([clip_id])[0].astype(np.float32), expected, atol=2e-3, rtol=2e-3)
        np.testing.assert_array_equal(store.windows(clip_id)[0], store.get([clip_id])[0])
    assert store.verify() == []
    # the partition holds no second copy of the matrices as windows
    assert not list((tmp_path / "store" / "partitions").glob("*/window_stacks"))


def test_video_store_samples_frames_over_the_whole_video(encoders, tmp_path):
    folder = tmp_path / "videos"
    for number, frames in enumerate((12, 25, 3)):  # longer and shorter than the model's 4 frames
        write_video(folder / f"v{number}.mp4", frames, seed=number)
    (folder / "noise.mp4").write_bytes(os.urandom(2000))
    summary = extract(folder, tmp_path / "store", workers=1, vivit=str(encoders["vivit"]))  # decoding processes
    assert summary.exit_code == 1
    store = FeatureStore.open(str(tmp_path / "store"))
    assert (store.encoder.modality, store.encoder.kind, store.stack_shape) == (VIDEO, "vivit", (9, 32))
    assert {r.clip_id for r in store.failures()} == {"noise.mp4"}
    for number, frames in enumerate((12, 25, 3)):
        clip_id = f"v{number}.mp4"
        expected = reference_video(encoders["vivit"], folder / clip_id).astype(np.float16)
        np.testing.assert_allclose(store.get([clip_id])[0].astype(np.float32), expected, atol=2e-3, rtol=2e-3)
        assert store.record(clip_id).duration == pytest.approx(frames / 8)
    assert store.verify() == []


def test_rerun_resumes_and_other_encoders_are_refused(encoders, tmp_path):
    folder = tmp_path / "images"
    for number in range(4):
        write_image(folder / f"i{number}.png", number, (32, 32))
    first = extract(folder, tmp_path / "store", vit=str(encoders["vit"]))
    assert (first.processed, first.exit_code) == (4, 0)
    before = FeatureStore.open(str(tmp_path / "store")).get(["i0.png", "i3.png"])
    write_image(folder / "i4.png", 4, (32, 32))
    write_image(folder / "i0.png", 99, (32, 32))  # changed since it was committed
    again = extract(folder, tmp_path / "store", vit=str(encoders["vit"]))
    assert (again.processed, again.skipped, again.changed) == (2, 3, 1)
    store = FeatureStore.open(str(tmp_path / "store"))
    assert len(store) == 5
    np.testing.assert_array_equal(store.get(["i3.png"]), before[1:])
    assert not np.array_equal(store.get(["i0.png"]), before[:1])
    # a video encoder on an image store, and two encoders at once, are one-line mistakes
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for options in (["--vivit", str(encoders["vivit"])], ["--vit", str(encoders["vit"]), "--mert", "x"]):
        result = subprocess.run([sys.executable, "-m", "mullama.cli", "extract", str(folder), "--store",
                                 str(tmp_path / "store"), *options], capture_output=True, text=True, env=env,
                                timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_exif_orientation_is_applied_and_huge_images_are_recorded_not_decoded(encoders, tmp_path):
    from mullama.extract.vision import MAX_IMAGE_PIXELS

    folder = tmp_path / "images"
    folder.mkdir()
    stored = Image.fromarray(np.random.default_rng(5).integers(0, 255, (30, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are shown turned 90 degrees clockwise (a portrait photo)
    stored.save(folder / "tagged.png", exif=exif)
    stored.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    stored.save(folder / "tagged.jpg", exif=exif, quality=95)
    Image.open(folder / "tagged.jpg").transpose(Image.Transpose.ROTATE_270).save(folder / "upright-jpg.png")
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # just over the limit: bilevel, so a few MB to write
    Image.new("1", (side, side)).save(folder / "huge.png")
    summary = extract(folder, tmp_path / "store", vit=str(encoders["vit"]))
    assert summary.exit_code == 1
    store = FeatureStore.open(str(tmp_path / "store"))
    [failure] = store.failures()
    assert failure.clip_id == "huge.png" and failure.reason.startswith("too_large:")
    assert f"over the {MAX_IMAGE_PIXELS:,} pixels" in failure.reason
    np.testing.assert_array_equal(store.get(["tagged.png"]), store.get(["upright.png"]))
    np.testing.assert_array_equal(store.get(["tagged.jpg"]), store.get(["upright-jpg.png"]))
    assert not np.array_equal(store.get(["tagged.png"]), store.get(["tagged.jpg"]))
