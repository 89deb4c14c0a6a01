"""The MusicGen decoder family (docs/generation.md): a frozen MusicGen, or MusicGen-Melody for editing, that
turns conditioning in its text encoder's output space into audio.

The conditioning is what MusicGen's T5 encoder would give for a caption: (B, L, width) rows with a mask. The
generator's projector predicts it from LLaMA's hidden states; `text_conditioning` computes it from captions once,
for the training targets. Nothing here trains: every weight is frozen.

    decoder = MusicGenDecoder.load("musicgen-small")
    rows, mask = decoder.text_conditioning(["a calm piano melody"], length=128)
    audio = decoder.generate(rows, seconds=8, seed=0)                  # (B, samples) at decoder.sampling_rate
    audio = melody_decoder.generate(rows, seconds=8, melody=[input_audio])   # MusicGen-Melody: edit
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers.audio_utils import chroma_filter_bank
from transformers.modeling_outputs import BaseModelOutput

from mullama.errors import MullamaError
from mullama.folder_config import read_folder_config
from mullama.music.decoder import DecoderFamily, DecoderKind
from mullama.music.space import ConditioningSpace
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype

PLAIN = DecoderKind("musicgen", "plain MusicGen", follows_recording=False)
MELODY = DecoderKind("musicgen_melody", "musicgen_melody", follows_recording=True)  # follows the input's chroma
MODEL_CLASSES = {PLAIN.name: "MusicgenForConditionalGeneration",
                 MELODY.name: "MusicgenMelodyForConditionalGeneration"}
FINGERPRINT_TENSOR = "text_encoder.shared.weight"  # the T5 token table: differs between any two text encoders
FINGERPRINT_ROWS = 8
# MusicGen-Melody's chroma settings (its feature extractor's defaults): a 16384-point STFT every 4096 samples at
# 32 kHz, 12 pitch classes, each frame reduced to its strongest class.
CHROMA_FFT = 16384
CHROMA_HOP = 4096


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(folder: Path) -> str:
    """sha256 of the first rows of the T5 token table, read alone from the safetensors file that holds it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        file = folder / json.loads(index.read_text())["weight_map"].get(FINGERPRINT_TENSOR, "model.safetensors")
    else:
        file = folder / "model.safetensors"
    if not file.is_file():
        raise MullamaError(f"{folder} has no safetensors weights (model.safetensors or a sharded index)")
    with safe_open(str(file), framework="pt") as handle:
        if FINGERPRINT_TENSOR not in handle.keys():
            raise MullamaError(f"{folder}: {FINGERPRINT_TENSOR} is missing; is this a MusicGen folder?")
        rows = handle.get_slice(FINGERPRINT_TENSOR)[:FINGERPRINT_ROWS]
    return hashlib.sha256(rows.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def read_kind(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """(musicgen | musicgen_melody, the raw config) of a MusicGen folder, checked before any weight loads."""
    raw = read_folder_config(folder, "a MusicGen folder", "create a random one with `mullama models init-musicgen`")
    kind = raw.get("model_type")
    if kind not in MODEL_CLASSES:
        raise MullamaError(f"{folder}: model_type {kind!r} is not a MusicGen model (musicgen or musicgen_melody)")
    return kind, raw


def read_space(folder: str | Path) -> ConditioningSpace:
    """The conditioning space of a MusicGen folder, from its config, tokenizer and a few weight rows."""
    folder = Path(folder)
    _, raw = read_kind(folder)
    text = {k: v for k, v in raw.get("text_encoder", {}).items()
            if not k.startswith("_") and k != "transformers_version"}
    tokenizer = folder / "tokenizer.json"
    return ConditioningSpace(width=int(text.get("d_model", 0)), config_hash=_hash(text),
                             tokenizer_hash=hashlib.sha256(tokenizer.read_bytes()).hexdigest()
                             if tokenizer.is_file() else "",
                             weights_fingerprint=_fingerprint(folder))


def chroma_frames(audio: np.ndarray, rate: int, num_chroma: int = 12) -> torch.Tensor:
    """(frames, num_chroma) one-hot melody features of mono `audio` at `rate` (MusicGen-Melody's conditioning):
    power spectrogram, pitch-class filter bank, then the strongest class of each frame. Scaling never changes an
    arg-max, so no normalisation is needed."""
    wave = torch.as_tensor(audio, dtype=torch.float32)
    if wave.numel() < CHROMA_FFT:
        wave = torch.nn.functional.pad(wave, (0, CHROMA_FFT - wave.numel()))
    spectrum = torch.stft(wave, CHROMA_FFT, CHROMA_HOP, window=torch.hann_window(CHROMA_FFT), center=True,
                          return_complex=True).abs().pow(2)  # (bins, frames)
    bank = torch.from_numpy(chroma_filter_bank(num_frequency_bins=CHROMA_FFT, num_chroma=num_chroma,
                                               sampling_rate=rate, tuning=0)).float()
    chroma = bank @ spectrum  # (num_chroma, frames)
    return torch.nn.functional.one_hot(chroma.argmax(dim=0), num_chroma).float()


class MusicGenDecoder:
    """A frozen MusicGen (or MusicGen-Melody) folder: conditioning rows in, audio out."""

    sampling_keywords = ("top_k", "temperature")

    def __init__(self, model: Any, tokenizer: Any, kind: str, space: ConditioningSpace):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.space = space

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto", dtype: str = "fp32") -> "MusicGenDecoder":
        kind, _ = read_kind(folder)
        space = read_space(folder)
        torch_device = resolve_device(device)
        model_class = getattr(transformers, MODEL_CLASSES[kind])
        try:
            with quiet_transformers():
                model = model_class.from_pretrained(str(folder), dtype=resolve_dtype(dtype, torch_device))
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise MullamaError(f"cannot load MusicGen from {folder}: {exc}") from None
        return cls(model.to(torch_device).eval().requires_grad_(False), tokenizer, kind, space)

    # ------------------------------------------------------------------ properties
    @property
    def melody(self) -> bool:
        """MusicGen-Melody: generation can follow the melody of an input recording (editing)."""
        return self.kind == MELODY.name

    @property
    def sampling_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> int:
        return int(self.model.config.audio_encoder.frame_rate)

    @property
    def device(self) -> torch.device:
        return self.model.decoder.lm_heads[0].weight.device

    def row_count(self, length: int) -> int:
        """Rows of a conditioning with `length` T5 rows: the same (MusicGen attends T5's rows alone)."""
        return length

    @property
    def max_seconds(self) -> float:
        """The longest audio the decoder's positions allow (its codebooks are delayed by one frame each)."""
        decoder = self.model.config.decoder
        return (decoder.max_position_embeddings - decoder.num_codebooks) / self.frame_rate

    # ------------------------------------------------------------------ conditioning
    @torch.inference_mode()
    def text_conditioning(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
        """((B, length, width) float32, (B, length) bool): the T5 encoder's output for each text, padded or cut to
        `length` tokens, zero at padding (what MusicGen's cross-attention sees)."""
        batch = self.tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                               return_tensors="pt").to(self.device)
        rows = self.model.text_encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        return (rows * mask[..., None]).cpu().numpy(), mask.cpu().numpy()

    # ------------------------------------------------------------------ generation
    def _melody_states(self, text: torch.Tensor, chroma: list[torch.Tensor] | None) -> torch.Tensor:
        """MusicGen-Melody's prefix: projected chroma (repeated or cut to its chroma length), then the text rows."""
        model = self.model
        config = model.config
        if model.text_encoder.config.hidden_size != model.decoder.config.hidden_size:
            text = model.enc_to_dec_proj(text)
        if chroma is None:  # the model's own stand-in for "no melody": class 0 on
            null = torch.zeros(text.shape[0], 1, config.num_chroma, device=text.device, dtype=text.dtype)
            null[..., 0] = 1
            frames = null
        else:
            frames = torch.stack([c[: config.chroma_length] for c in chroma]).to(device=text.device, dtype=text.dtype)
        audio = model.audio_enc_to_dec_proj(frames)
        audio = audio.repeat(1, -(-config.chroma_length // audio.shape[1]), 1)[:, : config.chroma_length]
        return torch.cat([audio, text], dim=1)

    @torch.inference_mode()
    def generate(self, conditioning: np.ndarray | torch.Tensor, seconds: float, *, guidance: float = 3.0,
                 top_k: int = 250, temperature: float = 1.0, seed: int | None = None,
                 melody: Sequence[np.ndarray] | None = None, melody_rate: int = 0) -> np.ndarray:
        """(B, samples) float32 audio at `sampling_rate` from (B, L, width) conditioning rows (all rows attended).

        guidance > 1: classifier-free guidance against empty conditioning, as MusicGen samples by default.
        melody (MusicGen-Melody only): one mono recording per row, at `melody_rate`, whose chroma the output follows.
        """
        if seconds <= 0 or seconds > self.max_seconds:
            raise MullamaError(f"--seconds {seconds}: this MusicGen generates between 0 and {self.max_seconds:g} "
                               "seconds")
        if melody is not None and not self.melody:
            raise MullamaError("following an input recording needs a MusicGen-Melody folder (model_type "
                               "musicgen_melody); this one is plain MusicGen")
        model = self.model
        rows = torch.as_tensor(conditioning, dtype=torch.float32).to(self.device, model.dtype)
        batch = rows.shape[0]
        if rows.ndim != 3 or rows.shape[2] != self.space.width:
            raise MullamaError(f"conditioning must be (batch, length, {self.space.width}), got {tuple(rows.shape)}")
        guided = guidance > 1
        frames = max(1, round(seconds * self.frame_rate))
        settings = {"max_new_tokens": frames + model.config.decoder.num_codebooks - 1, "do_sample": temperature > 0,
                    "guidance_scale": guidance if guided else None,
                    **({"top_k": top_k, "temperature": temperature} if temperature > 0 else {})}
        # generate() takes the batch size from `inputs`; with guidance the rows below carry twice as many items.
        dummy = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        if seed is not None:
            torch.manual_seed(seed)
        with quiet_transformers():
            if self.melody:
                chroma = None if melody is None else [chroma_frames(m, melody_rate) for m in melody]
                states = self._melody_states(rows, chroma)
                if guided:
                    states = torch.cat([states, self._melody_states(torch.zeros_like(rows), None)])
                audio = model.generate(inputs=dummy, encoder_hidden_states=states, **settings)
            else:
                mask = torch.ones(batch, rows.shape[1], dtype=torch.long, device=self.device)
                if guided:  # the unconditional half: zero rows, all masked (MusicGen's own null conditioning)
                    rows, mask = torch.cat([rows, torch.zeros_like(rows)]), torch.cat([mask, torch.zeros_like(mask)])
                audio = model.generate(inputs=dummy if guided else None, attention_mask=mask,
                                       encoder_outputs=BaseModelOutput(last_hidden_state=rows), **settings)
        return audio[:, 0].float().cpu().numpy()


def detect_kind(folder: Path) -> str | None:
    """musicgen or musicgen_melody for a folder with a config.json (a clear error for another model_type)."""
    return read_kind(folder)[0] if (folder / "config.json").is_file() else None


FAMILY = DecoderFamily(kinds=(PLAIN, MELODY), detect=detect_kind, read_space=read_space,
                       load=lambda folder, device, progress: MusicGenDecoder.load(folder, device=device))
