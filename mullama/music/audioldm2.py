"""AudioLDM2, MuMu-LLaMA's alternative music decoder (docs/generation.md): a frozen diffusers `AudioLDM2Pipeline`
folder driven through its `prompt_embeds` path, so neither its tokenizers nor its text encoders run at generation.

AudioLDM2's UNet cross-attends to two sequences: the T5 encoder's output of the caption, and the rows its GPT-2
language model writes from the CLAP and T5 outputs (8 of them). The generator predicts both at once, packed into
one (rows, width) array the way MusicGen's conditioning is one: the first `length` rows are the T5 rows, the
last 8 the language model's, each zero-filled to the wider of the two widths. Rows that are exactly zero are
padding and are masked from T5's cross-attention; predicted rows are never exactly zero, so all are attended, as
MusicGen attends all of its predicted rows.

    decoder = AudioLDM2Decoder.load("audioldm2-music")
    rows, mask = decoder.text_conditioning(["a calm piano"], length=64)   # (1, 72, 1024): a training target
    audio = decoder.generate(rows, seconds=10, seed=0, steps=200)       # (1, samples) at 16 kHz
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open

from mullama.errors import MullamaError
from mullama.music.decoder import DecoderFamily, DecoderKind
from mullama.music.space import ConditioningSpace
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype

AUDIOLDM2 = DecoderKind("audioldm2", "audioldm2", follows_recording=False)  # no melody conditioning

PIPELINE = "AudioLDM2Pipeline"
# The parts whose configs, tokenizers and weights decide the conditioning a caption gets.
TEXT_PARTS = ("text_encoder", "text_encoder_2", "projection_model", "language_model")
TOKENIZERS = ("tokenizer", "tokenizer_2")
FINGERPRINTS = (("text_encoder_2", "shared.weight"), ("language_model", "transformer.wte.weight"))
FINGERPRINT_ROWS = 8
DEFAULT_STEPS = 200  # the published pipeline's default number of denoising steps
# The published checkpoints were trained on 10 s clips; memory and time grow with the length asked for.
MAX_SECONDS = 60.0


def is_audioldm2(folder: str | Path) -> bool:
    """Whether `folder` is a saved diffusers AudioLDM2 pipeline (its model_index.json names the pipeline)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == PIPELINE
    except ValueError:
        return False


def _part_config(folder: Path, part: str) -> dict[str, Any]:
    path = folder / part / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MullamaError(f"{folder} is not a whole AudioLDM2 folder: {part}/config.json is unreadable ({exc})") \
            from None
    return {k: v for k, v in raw.items() if not k.startswith("_") and k not in ("transformers_version",)}


def _tensor_rows(folder: Path, part: str, name: str) -> bytes:
    file = folder / part / "model.safetensors"
    if not file.is_file():
        raise MullamaError(f"{folder}/{part} has no model.safetensors; is this an AudioLDM2 folder saved with "
                           "safetensors?")
    with safe_open(str(file), framework="pt") as handle:
        if name not in handle.keys():
            raise MullamaError(f"{folder}/{part}: {name} is missing; is this an AudioLDM2 folder?")
        rows = handle.get_slice(name)[:FINGERPRINT_ROWS]
    return rows.to(torch.float32).contiguous().numpy().tobytes()


def read_audioldm2_space(folder: str | Path) -> ConditioningSpace:
    """The conditioning space of an AudioLDM2 folder, from its text parts' configs, its tokenizers and a few rows
    of the T5 and GPT-2 token tables: read before any weight loads."""
    folder = Path(folder)
    if not is_audioldm2(folder):
        raise MullamaError(f"{folder} is not an AudioLDM2 folder: its model_index.json does not name {PIPELINE}")
    configs = {part: _part_config(folder, part) for part in TEXT_PARTS}
    t5_width = int(configs["text_encoder_2"].get("d_model", 0))
    gpt2_width = int(configs["language_model"].get("n_embd", 0))
    tokenizers = hashlib.sha256()
    for part in TOKENIZERS:
        for file in sorted((folder / part).glob("*")):
            if file.is_file():
                tokenizers.update(file.name.encode() + file.read_bytes())
    weights = hashlib.sha256(b"".join(_tensor_rows(folder, part, name) for part, name in FINGERPRINTS))
    return ConditioningSpace(width=max(t5_width, gpt2_width),
                             config_hash=hashlib.sha256(json.dumps(configs, sort_keys=True).encode()).hexdigest(),
                             tokenizer_hash=tokenizers.hexdigest(), weights_fingerprint=weights.hexdigest())


class AudioLDM2Decoder:
    """A frozen AudioLDM2 pipeline folder: packed conditioning rows in, 16 kHz audio out."""

    kind = AUDIOLDM2.name
    sampling_keywords = ("steps",)

    def __init__(self, pipeline: Any, space: ConditioningSpace):
        self.pipeline = pipeline
        self.space = space
        self._nulls: dict[int, np.ndarray] = {}  # the empty caption's rows by T5 length: guidance's null

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", dtype: str = "fp32",
             progress: bool = False) -> "AudioLDM2Decoder":
        # Imported here, not at the top: every music command reaches this module through the registry, and
        # diffusers' pipelines would add 2.3-2.9 s (measured, after the LLaMA's own imports) to the start of every
        # MusicGen run and server that never uses them.
        from diffusers import AudioLDM2Pipeline
        from diffusers.utils import logging as diffusers_logging

        space = read_audioldm2_space(folder)
        torch_device = resolve_device(device)
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            with quiet_transformers():
                pipeline = AudioLDM2Pipeline.from_pretrained(str(folder), dtype=resolve_dtype(dtype, torch_device))
        except (OSError, ValueError) as exc:
            raise MullamaError(f"cannot load AudioLDM2 from {folder}: {exc}") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipeline.set_progress_bar_config(disable=not progress, desc="denoise", dynamic_ncols=True)
        for part in pipeline.components.values():
            if isinstance(part, torch.nn.Module):
                part.eval().requires_grad_(False)
        return cls(pipeline.to(torch_device), space)

    # ------------------------------------------------------------------ properties
    @property
    def sampling_rate(self) -> int:
        return int(self.pipeline.vocoder.config.sampling_rate)

    @property
    def generated_rows(self) -> int:
        """How many rows the language model writes (the pipeline's `max_new_tokens`)."""
        return int(getattr(self.pipeline.language_model.config, "max_new_tokens", None) or 8)

    @property
    def t5_width(self) -> int:
        return int(self.pipeline.text_encoder_2.config.d_model)

    @property
    def gpt2_width(self) -> int:
        return int(self.pipeline.language_model.config.n_embd)

    @property
    def min_seconds(self) -> float:
        """The shortest audio the VAE's downsampling allows (one latent frame)."""
        vocoder = self.pipeline.vocoder.config
        return float(np.prod(vocoder.upsample_rates)) / vocoder.sampling_rate * self.pipeline.vae_scale_factor

    @property
    def max_seconds(self) -> float:
        return MAX_SECONDS

    def row_count(self, length: int) -> int:
        """Rows of a packed conditioning with `length` T5 rows."""
        return length + self.generated_rows

    # ------------------------------------------------------------------ conditioning
    def _pack(self, t5_rows: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        width = self.space.width
        pad = torch.nn.functional.pad
        return torch.cat([pad(t5_rows, (0, width - t5_rows.shape[-1])),
                          pad(generated, (0, width - generated.shape[-1]))], dim=1)

    def _unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T5 rows, their mask: zero rows are padding, the language model's rows)."""
        t5_rows = rows[:, : -self.generated_rows, : self.t5_width]
        generated = rows[:, -self.generated_rows:, : self.gpt2_width]
        mask = (t5_rows != 0).any(dim=-1)
        mask[:, 0] |= ~mask.any(dim=1)  # an all-zero conditioning keeps one attended row: never an empty softmax
        return t5_rows, mask.long(), generated

    @torch.inference_mode()
    def text_conditioning(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """((B, length + 8, width) float32, (B, length + 8) bool): AudioLDM2's own conditioning of each text (its
        T5 rows cut or zero-padded to `length`, then the language model's rows), packed as the generator learns
        it. The pipeline's own text path computes it (CLAP and T5, the projection model, GPT-2's 8 new rows), one
        text at a time, as the pipeline conditions a single prompt."""
        rows, masks = [], []
        for text in texts:  # alone: in a batch, padding would shift GPT-2's positions and change the rows
            with quiet_transformers(), warnings.catch_warnings():  # diffusers' GPT-2 loop uses a deprecated name
                warnings.simplefilter("ignore", FutureWarning)
                t5_rows, mask, generated = self.pipeline.encode_prompt([text], self.pipeline.device, 1, False)
            t5_rows, mask = t5_rows[:, :length].float(), mask[:, :length].bool()
            t5_rows = torch.nn.functional.pad(t5_rows * mask[..., None], (0, 0, 0, length - t5_rows.shape[1]))
            mask = torch.nn.functional.pad(mask, (0, length - mask.shape[1]))
            rows.append(self._pack(t5_rows, generated.float()))
            masks.append(torch.cat([mask, mask.new_ones(1, self.generated_rows)], 1))
        return torch.cat(rows).cpu().numpy(), torch.cat(masks).cpu().numpy()

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, conditioning: np.ndarray | torch.Tensor, seconds: float, *, guidance: float = 3.5,
                 steps: int = DEFAULT_STEPS, seed: int | None = None, melody: Sequence[np.ndarray] | None = None,
                 melody_rate: int = 0) -> np.ndarray:
        """(B, samples) float32 audio at `sampling_rate` from (B, rows, width) packed conditioning.

        guidance > 1: classifier-free guidance against the empty caption's own conditioning. (The pipeline pads
        the empty caption to the prompt's length instead, which moves GPT-2's positions: its null differs with
        every prompt length.)
        `melody` is refused: AudioLDM2 has no melody conditioning.
        """
        if melody is not None:
            raise MullamaError("following an input recording needs a MusicGen-Melody folder; AudioLDM2 cannot")
        if not self.min_seconds <= seconds <= self.max_seconds:
            raise MullamaError(f"--seconds {seconds}: this AudioLDM2 generates between {self.min_seconds:g} and "
                               f"{self.max_seconds:g} seconds")
        if steps < 1:
            raise MullamaError(f"--steps {steps}: give at least 1 denoising step")
        pipeline = self.pipeline
        rows = torch.as_tensor(conditioning, dtype=torch.float32)
        if rows.ndim != 3 or rows.shape[2] != self.space.width or rows.shape[1] <= self.generated_rows:
            raise MullamaError(f"conditioning must be (batch, more than {self.generated_rows} rows, "
                               f"{self.space.width}), got {tuple(rows.shape)}")
        t5_rows, mask, generated = self._unpack(rows.to(pipeline.device))
        dtype = pipeline.text_encoder_2.dtype
        negative: dict[str, Any] = {}
        if guidance > 1:  # the null is the same for every row and call: encoded once per length, then repeated
            length = t5_rows.shape[1]
            if length not in self._nulls:
                self._nulls[length] = self.text_conditioning([""], length)[0]
            null = torch.from_numpy(self._nulls[length]).expand(rows.shape[0], -1, -1)
            null_t5, null_mask, null_generated = self._unpack(null.to(pipeline.device))
            negative = {"negative_prompt_embeds": null_t5.to(dtype), "negative_attention_mask": null_mask,
                        "negative_generated_prompt_embeds": null_generated.to(pipeline.language_model.dtype)}
        generator = None if seed is None else torch.Generator(device=pipeline.device).manual_seed(seed)
        with quiet_transformers():
            audio = pipeline(prompt_embeds=t5_rows.to(dtype), attention_mask=mask,
                             generated_prompt_embeds=generated.to(pipeline.language_model.dtype), **negative,
                             audio_length_in_s=seconds, num_inference_steps=steps, guidance_scale=guidance,
                             generator=generator, output_type="np").audios
        return np.asarray(audio, dtype=np.float32).reshape(rows.shape[0], -1)


def detect_kind(folder: Path) -> str | None:
    return AUDIOLDM2.name if is_audioldm2(folder) else None


FAMILY = DecoderFamily(kinds=(AUDIOLDM2,), detect=detect_kind, read_space=read_audioldm2_space,
                       load=lambda folder, device, progress: AudioLDM2Decoder.load(folder, device=device,
                                                                                   progress=progress))
