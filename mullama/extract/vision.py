"""Image and video encoders (transformers `ViTModel`, `VivitModel`): one item -> its last-layer token matrix.

MuMu-LLaMA reduces an image or a video with a learned Conv1d over every token of the encoder's last layer
(197 -> 1 for ViT-B/16, 3137 -> 1 for ViViT-B), so the store keeps that whole matrix per item, in the place
of MERT's layer stack (docs/vision.md, "What is cached"). Decoding and the processor's resize and
normalisation run in the reader's workers; the encoder only runs the model on ready pixel tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import ViTConfig, ViTImageProcessorPil, ViTModel, VivitConfig, VivitImageProcessor, VivitModel

from mullama.data.manifest import ClipSource
from mullama.encoder_identity import IMAGE, VIDEO, VIT, VIVIT, EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.audio import AudioError
from mullama.extract.encoder import EncoderKind, register
from mullama.extract.encoder_files import config_hash, hash_files, read_config, weight_files
from mullama.extract.reader import DecodedClip, OpenedSource, decode_item
from mullama.hub_ids import identity_origin
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype
from mullama.store import StoreSettings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv"})
MODEL_TYPES = {VIT: "vit", VIVIT: "vivit"}
# Frames whose count or size would make decoding absurdly long or large are refused: a 4-hour film at 60 fps.
MAX_VIDEO_FRAMES = 1_000_000
# The encoder sees 224 x 224 pixels; a 144-megapixel PNG took 2.4 GB to decode. 40 megapixels (a large camera's
# photo, 120 MB as RGB) is read; anything larger is recorded as too large without being decoded.
MAX_IMAGE_PIXELS = 40_000_000
PRESCALE = 2  # frames larger than twice the processor's short side are reduced to it while decoding


@dataclass(frozen=True)
class VisualDecodeSettings:
    """What the reader's workers need to turn a file into the encoder's pixel tensor."""

    kind: str  # vit (one image) or vivit (a video)
    folder: str  # the encoder folder: its preprocessor_config.json, loaded once per worker
    frames: int  # frames sampled evenly over a video (ViViT's num_frames); 0 for images


@functools.lru_cache(maxsize=4)
def load_processor(kind: str, folder: str) -> Any:
    """The folder's image processor; the PIL backend for ViT (no torchvision needed), ViViT's own otherwise."""
    processor_class = ViTImageProcessorPil if kind == VIT else VivitImageProcessor
    try:
        with quiet_transformers():
            return processor_class.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise MullamaError(f"{folder}: cannot load its preprocessor_config.json ({exc})") from None


def short_side(processor: Any) -> int:
    """The short side the processor resizes to: frames are scaled down to it while decoding."""
    size = processor.size
    edge = size.get("shortest_edge") if hasattr(size, "get") else getattr(size, "shortest_edge", None)
    if edge:
        return int(edge)
    return int(max(size["height"], size["width"]))


def read_image(file: str | io.BytesIO, where: str) -> Any:
    """The image upright, as a viewer shows it (its EXIF orientation applied), in RGB; one over
    MAX_IMAGE_PIXELS is refused from its header, before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below by our lower limit
            with Image.open(file) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise AudioError("too_large", f"{where}: {image.width} x {image.height} is over the "
                                                  f"{MAX_IMAGE_PIXELS:,} pixels an image may have")
                upright = ImageOps.exif_transpose(image)
                return upright.convert("RGB")  # the first frame of an animation; palette and alpha dropped
    except UnidentifiedImageError:
        raise AudioError("not_image", f"{where} is not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise AudioError("too_large", f"{where}: {exc}") from None


def frame_indices(total: int, count: int) -> np.ndarray:
    """`count` frame numbers spread evenly from the first frame to the last (repeats when the video is shorter)."""
    return np.linspace(0, total - 1, count).round().astype(np.int64)


def read_frames(file: str | io.BytesIO, where: str, count: int, side: int) -> tuple[list[np.ndarray], float]:
    """`count` RGB frames sampled evenly over the whole video, and the video's duration in seconds. Packets are
    counted first (demuxing only), then frames decoded. A frame whose short side exceeds PRESCALE x `side` is
    first reduced to that (32 full-HD frames would take 200 MB per video in flight); smaller frames go to the
    processor untouched, as the published code gave them."""
    def reopen() -> Any:
        if isinstance(file, io.BytesIO):
            file.seek(0)
        return av.open(file)

    try:
        with reopen() as container:
            if not container.streams.video:
                raise AudioError("not_video", f"{where} has no video stream")
            stream = container.streams.video[0]
            total = 0
            for packet in container.demux(stream):
                total += packet.size > 0
                if total > MAX_VIDEO_FRAMES:
                    raise AudioError("too_long", f"{where} has over {MAX_VIDEO_FRAMES} frames")
            rate = float(stream.average_rate or 0)
        if total == 0:
            raise AudioError("empty", f"{where} has no video frames")
        wanted = frame_indices(total, count)
        chosen: dict[int, np.ndarray] = {}
        with reopen() as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number > wanted[-1]:
                    break
                if number in wanted:
                    scale = min(1.0, PRESCALE * side / min(frame.width, frame.height))
                    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
                    chosen[number] = frame.to_ndarray(format="rgb24", width=width, height=height)
    except av.error.FFmpegError as exc:
        raise AudioError("not_video", f"{where}: {exc}") from None
    if not chosen:
        raise AudioError("empty", f"{where}: no frame could be decoded")
    frames, last = [], next(iter(chosen.values()))
    for number in wanted:  # a decoder that yields fewer frames than packets: repeat the last one it gave
        last = chosen.get(int(number), last)
        frames.append(last)
    return frames, (total / rate if rate > 0 else 0.0)


def decode_visual(source: ClipSource, settings: VisualDecodeSettings) -> DecodedClip:
    """One image or video -> one encoder input, (3, H, W) or (frames, 3, H, W) float32 (the reader's decoder)."""
    def pixels(opened: OpenedSource) -> tuple[list[np.ndarray], float]:
        processor = load_processor(settings.kind, settings.folder)
        if settings.kind == VIT:
            image = read_image(opened.file, source.path)
            return [processor(images=[image], return_tensors="np")["pixel_values"][0].astype(np.float32)], 0.0
        frames, duration = read_frames(opened.file, source.path, settings.frames, short_side(processor))
        return [processor([frames], return_tensors="np")["pixel_values"][0].astype(np.float32)], duration

    return decode_item(source, pixels)


def tokens_per_item(config: Any) -> int:
    """Tokens of the last layer per image or video: patches (or tubelets) plus the class token."""
    if hasattr(config, "tubelet_size"):
        frames, height, width = config.tubelet_size
        return (config.num_frames // frames) * (config.image_size // height) * (config.image_size // width) + 1
    return (config.image_size // config.patch_size) ** 2 + 1


class VisionEncoder:
    """Pixel tensors of equal shape -> (B, tokens, hidden) last-layer matrices, float32."""

    def __init__(self, model: Any, identity: EncoderIdentity, device: torch.device, precision: str):
        self.model, self.identity, self.device, self.precision = model, identity, device, precision
        self.sample_rate = 0  # no audio: the pipeline's silence stack is for audio stores only

    def encode(self, items: list[np.ndarray]) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(np.stack(items), dtype=np.float32)).to(self.device)
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            hidden = self.model(pixel_values=pixels).last_hidden_state
        return hidden.float().cpu().numpy()


@dataclass(frozen=True)
class VisionSpec:
    """What a ViT or ViViT folder is, read from its files without loading the model (cheap, for planners)."""

    folder: Path
    identity: EncoderIdentity
    frames: int

    @classmethod
    def read(cls, folder: str | Path, kind: str) -> "VisionSpec":
        folder = Path(folder)
        if not folder.is_dir():
            raise MullamaError(f"{kind} folder {folder} does not exist; create a random one with "
                               f"`mullama models init-{kind}`")
        raw = read_config(folder)
        if raw.get("model_type") != MODEL_TYPES[kind]:
            raise MullamaError(f"{folder}: model_type {raw.get('model_type')!r} is not a {kind} encoder "
                               f"(expected {MODEL_TYPES[kind]!r})")
        if not (folder / "preprocessor_config.json").is_file():
            raise MullamaError(f"{folder} has no preprocessor_config.json (the image processor's settings)")
        try:
            config = (ViTConfig if kind == VIT else VivitConfig).from_dict(raw)
            tokens, hidden = tokens_per_item(config), int(config.hidden_size)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise MullamaError(f"{folder}: config.json lacks a field {kind} needs ({exc})") from None
        identity = EncoderIdentity(
            **identity_origin(folder, raw, folder.name), config_hash=config_hash(raw),
            weights_hash=hash_files(weight_files(folder)), sample_rate=0, hidden_states=tokens, hidden_size=hidden,
            modality=IMAGE if kind == VIT else VIDEO, kind=kind)
        return cls(folder, identity, int(getattr(config, "num_frames", 0)))

    @property
    def kind(self) -> str:
        return self.identity.kind

    @property
    def suffixes(self) -> frozenset[str]:
        """What a folder input is scanned for."""
        return IMAGE_SUFFIXES if self.kind == VIT else VIDEO_SUFFIXES

    decoder = staticmethod(decode_visual)

    def decode_settings(self, settings: StoreSettings | None = None) -> VisualDecodeSettings:
        """The processor's settings, from the folder: a store's settings change nothing here."""
        return VisualDecodeSettings(self.kind, str(self.folder), self.frames)

    def store_settings(self, requested: StoreSettings) -> StoreSettings:
        """No windows: one matrix per item (window_seconds 0 marks it)."""
        what = "image" if self.kind == VIT else f"video ({self.frames} frames sampled evenly over its length)"
        return dataclasses.replace(requested, window_seconds=0.0, min_window_seconds=0.0,
                                   pooling=f"every token of the last hidden state, one matrix per {what}")

    def check_settings(self, settings: StoreSettings) -> None:
        """Every setting suits an image or video encoder (the window settings do not apply)."""

    def load(self, device: str = "auto", precision: str = "auto") -> VisionEncoder:
        """The model in eval mode; `precision` auto = bf16 on CUDA, fp32 on CPU."""
        torch_device = resolve_device(device)
        autocast = resolve_dtype(precision, torch_device, allowed=("fp32", "bf16"), option="precision")
        model_class = ViTModel if self.kind == VIT else VivitModel
        try:
            with quiet_transformers():  # a published ViT's unused pooler weights are expected
                model = model_class.from_pretrained(str(self.folder), dtype=torch.float32, add_pooling_layer=False)
        except (OSError, ValueError) as exc:
            raise MullamaError(f"cannot load {self.kind} from {self.folder}: {exc}") from None
        model.eval().requires_grad_(False).to(torch_device)
        return VisionEncoder(model, self.identity, torch_device, "bf16" if autocast == torch.bfloat16 else "fp32")



register(EncoderKind(name=VIT, modality=IMAGE, option="vit", read=functools.partial(VisionSpec.read, kind=VIT)))
register(EncoderKind(name=VIVIT, modality=VIDEO, option="vivit", read=functools.partial(VisionSpec.read, kind=VIVIT)))
