"""MuMu-LLaMA's music generator (docs/generation.md): a request (and optionally a track) -> conditioning rows in a
music decoder's space, through the frozen LLaMA with its adapter, the output tokens and the projector.

    generator = MusicGenerator.load("runs/generator")           # adapter and LLaMA: the folders it was trained on
    rows = generator.rows(["a calm piano piece"])               # (1, 128, 768) for MusicGen's decoder
    rows = generator.rows(["play this on a violin"], stacks)    # editing: the track's stacks through the adapter

A generator folder holds only the output tokens and the projector (generator.safetensors) and generator.json,
which names the adapter, LLM and conditioning space it was trained with (each checked on load).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mullama.durable import publish, temporary_name, write_atomic
from mullama.errors import MullamaError
from mullama.model.checkpoint import MANIFEST_FILE
from mullama.model.identity import LlmIdentity, check_llm, read_llm_identity
from mullama.model.music_llama import Inputs, MusicLlama
from mullama.model.prompts import pad_left, prompt_ids
from mullama.music.decoders import decoder_space
from mullama.music.head import OutputConfig, OutputHead
from mullama.music.space import ConditioningSpace

GENERATOR_FILE = "generator.json"
WEIGHTS_FILE = "generator.safetensors"
FORMAT = "mullama-generator"
FORMAT_VERSION = 1


def adapter_digest(folder: str | Path) -> str:
    """sha256 of the adapter's manifest, which names its training run: the generator reads the LLaMA through
    this adapter (stage-2 LoRA and biases change it even for text-only requests)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise MullamaError(f"{folder} is not an adapter folder: {MANIFEST_FILE} is missing")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class GeneratorManifest:
    config: OutputConfig
    llm: LlmIdentity
    adapter: str  # adapter_digest of the adapter it was trained through
    space: ConditioningSpace
    trained_with: dict[str, str]  # folders used in training: the defaults of `mullama generate` and `edit`
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config.to_dict(),
                "llm": self.llm.to_dict(), "adapter": self.adapter, "conditioning": self.space.to_dict(),
                "trained_with": self.trained_with, "source": self.source}

    @classmethod
    def read(cls, folder: str | Path) -> "GeneratorManifest":
        path = Path(folder) / GENERATOR_FILE
        if not path.is_file():
            raise MullamaError(f"{folder} is not a generator folder: {GENERATOR_FILE} is missing (train one with "
                               "`mullama generator train`)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r} v{data.get('version')}, expected {FORMAT} "
                                 f"v{FORMAT_VERSION}")
            return cls(OutputConfig.from_dict(data["config"]), LlmIdentity.from_dict(data["llm"]), data["adapter"],
                       ConditioningSpace.from_dict(data["conditioning"]), dict(data["trained_with"]),
                       dict(data.get("source", {})))
        except (ValueError, KeyError, TypeError) as exc:
            raise MullamaError(f"{path} is not a readable generator manifest ({exc})") from None

    def decoder_folder(self, given: str) -> str:
        """`given` (--musicgen), or the music decoder folder the generator was trained for; its text side checked
        against the generator's before any weight loads."""
        folder = given or self.trained_with.get("musicgen", "")
        if not folder:
            raise MullamaError("give --musicgen: the generator does not name the music decoder folder it was trained "
                               "for")
        if not Path(folder).is_dir():
            raise MullamaError(f"music decoder folder {folder} does not exist" + (
                "" if given else " (the generator was trained for it; give --musicgen where it is now)"))
        self.space.check(decoder_space(folder), f"music decoder folder {folder}")
        return folder


class MusicGenerator:
    """A MusicLlama with output tokens and a projector into a music decoder's conditioning space."""

    def __init__(self, llama: MusicLlama, head: OutputHead, manifest: GeneratorManifest):
        self.llama = llama
        self.head = head
        self.manifest = manifest

    @classmethod
    def create(cls, llama: MusicLlama, adapter_dir: str | Path, llama_dir: str | Path, space: ConditioningSpace, *,
               trained_with: dict[str, str], seed: int = 0, **settings: Any) -> "MusicGenerator":
        """A new, untrained head on a loaded MusicLlama; `settings`: OutputConfig fields (tokens, length, ...)."""
        config = OutputConfig(d_model=llama.model.config.hidden_size, width=space.width, **settings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = OutputHead(config)
        manifest = GeneratorManifest(config, read_llm_identity(llama_dir), adapter_digest(adapter_dir), space,
                                     trained_with, {"created": "untrained"})
        return cls(llama, head.to(llama.device), manifest)

    @classmethod
    def load(cls, folder: str | Path, *, adapter: str | Path = "", llama: str | Path = "", dtype: str = "auto",
             device: str = "auto", encoder: Any = None) -> "MusicGenerator":
        """The generator in `folder` on its adapter and LLaMA (by default the folders it was trained with)."""
        manifest = GeneratorManifest.read(folder)
        adapter_dir, llama_dir = _folder(adapter, manifest, "adapter"), _folder(llama, manifest, "llama")
        cls.check_folders(manifest, folder, adapter_dir, llama_dir)
        model = MusicLlama.load(adapter_dir, llama_dir, dtype=dtype, device=device, encoder=encoder)
        return cls.on(model, folder, manifest)

    @staticmethod
    def check_folders(manifest: GeneratorManifest, folder: str | Path, adapter_dir: str | Path,
                      llama_dir: str | Path) -> None:
        """The adapter and LLaMA must be those the generator was trained through (checked before weights load)."""
        if adapter_digest(adapter_dir) != manifest.adapter:
            raise MullamaError(f"adapter {adapter_dir} is not the adapter generator {folder} was trained through; "
                               "give that adapter, or train a generator on this one")
        check_llm(manifest.llm, read_llm_identity(llama_dir), strict=True)

    @classmethod
    def on(cls, model: MusicLlama, folder: str | Path, manifest: GeneratorManifest) -> "MusicGenerator":
        """The generator's head on a MusicLlama already loaded from its checked folders (the server shares one)."""
        head = OutputHead(manifest.config)
        try:
            head.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        except Exception as exc:  # missing file, SafetensorError, shape or key mismatch: all a damaged folder
            raise MullamaError(f"{folder}/{WEIGHTS_FILE} is unreadable ({type(exc).__name__}: {exc}); train the "
                               "generator again") from None
        return cls(model, head.to(model.device).eval().requires_grad_(False), manifest)

    def save(self, folder: str | Path, source: dict[str, Any] | None = None) -> Path:
        """Weights, then the manifest, each flushed and renamed into place: a folder with a manifest is whole."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / WEIGHTS_FILE
        temporary = temporary_name(weights)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, temporary)
        (folder / GENERATOR_FILE).unlink(missing_ok=True)  # an old manifest must never describe new weights
        publish(temporary, weights)
        manifest = self.manifest if source is None else dataclasses.replace(self.manifest, source=source)
        write_atomic(folder / GENERATOR_FILE, json.dumps(manifest.to_dict(), indent=2).encode())
        return folder

    @property
    def config(self) -> OutputConfig:
        return self.manifest.config

    def check_space(self, space: ConditioningSpace, what: str) -> None:
        self.manifest.space.check(space, what)

    def conditioning(self, requests: Sequence[str], stacks: Inputs | None = None) -> torch.Tensor:
        """(B, length, width) conditioning rows in target units (times `scale`); gradients reach the head only.

        The request is the prompt's instruction; the output tokens follow the prompt, and their final hidden
        states (plus the tokens themselves) go through the projector. With `stacks`, the track reaches the LLaMA
        through the adapter, as in a question about it.
        """
        model, llm = self.llama, self.llama.model
        tokenizer = model.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = pad_left([prompt_ids(tokenizer, r, model.prompt_format) for r in requests], pad)
        ids = torch.tensor(batch["input_ids"], device=model.device)
        mask = torch.tensor(batch["attention_mask"], device=model.device)
        embeds = llm.model.embed_tokens(ids)
        tokens = self.head.tokens.to(embeds.dtype)[None].expand(len(requests), -1, -1)
        embeds = torch.cat([embeds, tokens], dim=1)
        mask = torch.cat([mask, torch.ones(len(requests), tokens.shape[1], dtype=mask.dtype, device=mask.device)], 1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        prompt = None if stacks is None else model.prompts(stacks)
        hidden = llm.final_hidden(embeds, mask, positions, prompt)[:, -tokens.shape[1]:]
        return self.head(hidden)

    @torch.inference_mode()
    def rows(self, requests: Sequence[str], stacks: Inputs | None = None) -> np.ndarray:
        """(B, length, width) float32 conditioning rows in the decoder's units, ready for a decoder's generate."""
        return (self.conditioning(requests, stacks).float() / self.config.scale).cpu().numpy()


def _folder(given: str | Path, manifest: GeneratorManifest, name: str) -> str:
    folder = str(given) or manifest.trained_with.get(name, "")
    if not folder:
        raise MullamaError(f"give --{name}: the generator does not name the {name} it was trained with")
    if not Path(folder).is_dir():
        raise MullamaError(f"{name} folder {folder} does not exist" + ("" if given else
                           " (the generator was trained with it; give --" + name + " where it is now)"))
    return folder
