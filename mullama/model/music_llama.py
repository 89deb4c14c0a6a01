"""The public model API: a frozen Hugging Face LLaMA with a music adapter, from layer stacks to answers.

    m = MusicLlama.load(adapter_dir, llama_dir, dtype="bf16")
    m.logits(input_ids, stacks)          # (B, T, V) next-token logits
    m.answer(stack, "Describe the audio")
    m.answer_batch(stacks, questions, temperature=0.6, top_p=0.8, max_new_tokens=512)
    m.answer(stack, "Describe the audio", knn=KnnMix(ClipIndex.open(store, "features"), weight=0.2))

Runs on CPU or GPU; generation is transformers' generate() (KV cache, sampling, left-padded batches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoTokenizer, GenerationConfig, StoppingCriteriaList, TextIteratorStreamer

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.hub import resolve_model
from mullama.model.adapter import MusicAdapter, build_adapter
from mullama.model.attention import register_music_attention
from mullama.model.checkpoint import AdapterManifest, load_adapter_weights, read_manifest, save_adapter
from mullama.model.identity import check_encoder, check_llm, read_llm_identity
from mullama.model.knn_mix import KnnMix, check_feature_space, mix_features
from mullama.model.llm import MusicLlamaForCausalLM
from mullama.model.prompts import CLEAN, Turn, check_format, pad_left, prompt_ids
from mullama.model.settings import (
    MODALITY_ORDER,
    MUMU_BRIDGE_EXPANSION,
    AdapterConfig,
    Branch,
    GenerationSettings,
    default_adapted_layers,
    default_layers_per_modality,
)
from mullama.model.stage2 import add_stage2
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype

StackLike = torch.Tensor | np.ndarray
Inputs = StackLike | Mapping[str, StackLike]  # one modality's stacks, or {modality: stacks} (docs/vision.md)


@contextlib.contextmanager
def _building(dtype: torch.dtype, device: torch.device | str) -> Iterator[None]:
    """Create modules directly in `dtype` on `device`: no fp32 copy of a 7B-sized adapter on the way."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def load_llm(llama_dir: str | Path, dtype: torch.dtype, device: torch.device,
             attention: str = "sdpa") -> MusicLlamaForCausalLM:
    """The frozen LLaMA in eval mode, with the music attention and no generation defaults from the folder."""
    name = register_music_attention(attention)
    try:
        with quiet_transformers():
            model = MusicLlamaForCausalLM.from_pretrained(str(llama_dir), dtype=dtype, attn_implementation=name)
    except (OSError, ValueError) as exc:
        raise MullamaError(f"cannot load LLaMA from {llama_dir}: {exc}") from None
    model.generation_config = GenerationConfig(bos_token_id=model.config.bos_token_id,
                                               eos_token_id=model.config.eos_token_id)
    return model.to(device).eval().requires_grad_(False)


def load_tokenizer(llama_dir: str | Path) -> Any:
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(llama_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise MullamaError(f"cannot load the tokenizer of {llama_dir}: {exc}") from None


class MusicLlama:
    """Frozen LLaMA + music adapter (+ stage-2 biases and LoRA), with its tokenizer and identities."""

    def __init__(self, model: MusicLlamaForCausalLM, tokenizer: Any, manifest: AdapterManifest):
        self.model = model
        self.tokenizer = tokenizer
        self.manifest = manifest

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, llama_dir: str | Path, encoder: EncoderIdentity | Mapping[str, EncoderIdentity], *,
               adapted_layers: int | None = None, query_len: int = 1, prompt_format: str = CLEAN,
               dtype: str | torch.dtype = "auto", adapter_dtype: str | torch.dtype = "fp32", device: str = "auto",
               seed: int = 0, attention: str = "sdpa") -> "MusicLlama":
        """A new, untrained adapter (zero gates: the model answers exactly like the bare LLaMA).

        `encoder` one identity: MU-LLaMA's audio adapter over the last `adapted_layers` layers. A mapping
        {modality: identity}: MuMu-LLaMA's layout, a branch and `adapted_layers` layers per modality.
        `llama_dir`: a folder or a Hugging Face Hub id (ORG/NAME[@REVISION]).
        """
        llama_dir = resolve_model(str(llama_dir), name="llama_dir").folder
        torch_device = resolve_device(device)
        identity = read_llm_identity(llama_dir)
        model = load_llm(llama_dir, resolve_dtype(dtype, torch_device), torch_device, attention)
        llm = model.config
        shape = {"d_model": llm.hidden_size, "num_heads": llm.num_attention_heads,
                 "num_layers": llm.num_hidden_layers, "query_len": query_len}
        encoders: dict[str, EncoderIdentity] = {}
        if isinstance(encoder, Mapping):
            encoders = {m: encoder[m] for m in MODALITY_ORDER if m in encoder}
            if set(encoders) != set(encoder) or not encoders:
                raise MullamaError(f"modalities {sorted(encoder)}: give one or more of {', '.join(MODALITY_ORDER)}")
            branches = tuple(Branch(m, e.hidden_states, e.hidden_size) for m, e in encoders.items())
            config = AdapterConfig(
                hidden_states=branches[0].hidden_states, encoder_hidden_size=branches[0].encoder_hidden_size,
                adapted_layers=adapted_layers or default_layers_per_modality(llm.num_hidden_layers, len(branches)),
                bridge_expansion=MUMU_BRIDGE_EXPANSION, branches=branches, **shape)
            encoder = None
        else:
            config = AdapterConfig(
                hidden_states=encoder.hidden_states, encoder_hidden_size=encoder.hidden_size,
                adapted_layers=adapted_layers or default_adapted_layers(llm.num_hidden_layers), **shape)
        with torch.random.fork_rng(devices=[]), _building(resolve_dtype(adapter_dtype, torch_device), "cpu"):
            torch.manual_seed(seed)
            adapter = build_adapter(config)
        model.attach_adapter(adapter.to(torch_device))
        manifest = AdapterManifest(config, identity, encoder, check_format(prompt_format), {"created": "untrained"},
                                   encoders=encoders)
        return cls(model, load_tokenizer(llama_dir), manifest)

    @classmethod
    def load(cls, adapter_dir: str | Path, llama_dir: str | Path, *, dtype: str | torch.dtype = "auto",
             adapter_dtype: str | torch.dtype | None = None, device: str = "auto",
             encoder: EncoderIdentity | Mapping[str, EncoderIdentity] | None = None, strict: bool = False,
             attention: str = "sdpa") -> "MusicLlama":
        """A trained adapter folder on the LLaMA folder it was trained with (checked; see identity.py).

        `encoder`: the identity of the stacks you will feed (e.g. the feature store's), checked against
        the adapter's ({modality: identity} for a multi-modal adapter). The adapter follows the LLM's dtype unless
        `adapter_dtype` is given. `llama_dir`: a folder or a Hugging Face Hub id (ORG/NAME[@REVISION]).
        """
        llama_dir = resolve_model(str(llama_dir), name="llama_dir").folder
        manifest = read_manifest(adapter_dir)
        check_llm(manifest.llm, read_llm_identity(llama_dir), strict)
        for modality, given in (encoder.items() if isinstance(encoder, Mapping) else [("audio", encoder)]):
            if given is not None:
                check_encoder(manifest.encoder_for(modality), given, strict)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        model = load_llm(llama_dir, torch_dtype, torch_device, attention)
        config = manifest.config
        with _building(resolve_dtype(adapter_dtype or torch_dtype, torch_device), "meta"):
            adapter = build_adapter(config)
        model.attach_adapter(adapter.to_empty(device=torch_device))  # every tensor is loaded below
        if config.stage2:
            with torch.random.fork_rng(devices=[]):
                add_stage2(model, biases=config.stage2_biases, lora_rank=config.lora_rank)
        load_adapter_weights(adapter_dir, model)
        model.requires_grad_(False)
        return cls(model, load_tokenizer(llama_dir), manifest)

    def enable_stage2(self, biases: bool = True, lora_rank: int = 16, seed: int = 0) -> None:
        """Add the stage-2 zero biases and LoRA (docs/adapter.md) (stage-2 training starts from a stage-1 adapter)."""
        config = self.config
        if config.stage2:
            raise MullamaError("stage-2 biases/LoRA are already present")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            add_stage2(self.model, biases=biases, lora_rank=lora_rank)
        config = dataclasses.replace(config, stage2_biases=biases, lora_rank=lora_rank)
        self.model.music_adapter.config = config
        self.manifest = dataclasses.replace(self.manifest, config=config)

    def save(self, folder: str | Path, source: dict[str, Any] | None = None) -> Path:
        """Write the trained tensors and adapter.json (never the frozen LLM)."""
        manifest = self.manifest if source is None else dataclasses.replace(self.manifest, source=source)
        return save_adapter(folder, self.model, manifest)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> AdapterConfig:
        return self.manifest.config

    @property
    def device(self) -> torch.device:
        return self.model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.embed_tokens.weight.dtype

    @property
    def prompt_format(self) -> str:
        return self.manifest.prompt_format

    # ------------------------------------------------------------------ computation
    def _stacks(self, stacks: Inputs) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(stacks, Mapping):
            return {modality: self._stacks(value) for modality, value in stacks.items()}
        return torch.as_tensor(np.asarray(stacks) if not isinstance(stacks, torch.Tensor) else stacks,
                               device=self.device)

    def _one(self, stack: Inputs) -> torch.Tensor | dict[str, torch.Tensor]:
        """One item's stack (or {modality: stack}) as a batch of one."""
        stacks = self._stacks(stack)
        return {m: s[None] for m, s in stacks.items()} if isinstance(stacks, dict) else stacks[None]

    @staticmethod
    def _batch_size(stacks: torch.Tensor | dict[str, torch.Tensor]) -> int:
        sizes = {s.shape[0] for s in stacks.values()} if isinstance(stacks, dict) else {stacks.shape[0]}
        if len(sizes) != 1:
            raise MullamaError(f"give every modality the same number of items, got {sorted(sizes)}")
        return sizes.pop()

    @property
    def modalities(self) -> tuple[str, ...]:
        """The inputs the adapter takes: ('audio',) for MU-LLaMA's, its branches' for a multi-modal one."""
        return self.config.modalities

    def prompts(self, stacks: Inputs, knn: KnnMix | None = None) -> torch.Tensor:
        """(B, L+1, H) layer stacks (or {modality: (B, T, H)} for a multi-modal adapter) -> (B, N, Q, d_model)
        prompts of the adapted layers; with `knn`, each music feature is first mixed with its neighbours in the
        index (docs/knn.md)."""
        stacks = self._stacks(stacks)
        if knn is None:
            return self.model.music_prompt(stacks)
        adapter = self.model.music_adapter
        if isinstance(stacks, dict) or not isinstance(adapter, MusicAdapter):
            raise MullamaError("the kNN mix applies to MU-LLaMA's single audio adapter only")
        check_feature_space(adapter, knn.index, self.manifest.encoder)
        return adapter.prompts(feature=mix_features(adapter.feature(stacks), knn))

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, stacks: Inputs,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V), float32, for token ids (B, T) and layer stacks (B, L+1, H).

        With an attention mask, positions count real tokens only (as generate() does), so left- and
        right-padded rows give the logits of their unpadded selves.
        """
        input_ids = torch.as_tensor(input_ids, device=self.device)
        mask = positions = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask, device=self.device)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        output = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            music_prompt=self.prompts(stacks), use_cache=False)
        return output.logits.float()

    def _generate_kwargs(self, stacks: torch.Tensor | dict[str, torch.Tensor], questions: Sequence[str],
                         knn: KnnMix | None, histories: Sequence[Sequence[Turn]] | None,
                         options: GenerationSettings) -> dict[str, Any]:
        """generate() arguments: left-padded prompts, the music prompts and the published sampling settings."""
        items = self._batch_size(stacks)
        if len(questions) != items or (histories is not None and len(histories) != len(questions)):
            raise MullamaError(f"{items} stacks but {len(questions)} questions"
                               + (f" and {len(histories)} histories" if histories is not None else ""))
        tokenizer = self.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        histories = histories if histories is not None else [()] * len(questions)
        batch = pad_left([prompt_ids(tokenizer, q, self.prompt_format, h) for q, h in zip(questions, histories)], pad)
        sampling = options.temperature > 0
        config = GenerationConfig(
            max_new_tokens=options.max_new_tokens, do_sample=sampling, num_beams=1, repetition_penalty=1.0,
            eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id,
            # Pure temperature + top-p sampling as published: top_k 0, or transformers' default 50 applies.
            **({"temperature": options.temperature, "top_p": options.top_p, "top_k": 0} if sampling else {}))
        return {"input_ids": torch.tensor(batch["input_ids"], device=self.device),
                "attention_mask": torch.tensor(batch["attention_mask"], device=self.device),
                "music_prompt": self.prompts(stacks, knn), "generation_config": config}

    @torch.inference_mode()
    def answer_batch(self, stacks: Inputs, questions: Sequence[str], knn: KnnMix | None = None,
                     histories: Sequence[Sequence[Turn]] | None = None, **settings: Any) -> list[str]:
        """One answer per (stack, question); settings: temperature, top_p, max_new_tokens, seed (docs/recipes.md);
        `knn`: MU-LLaMA's neighbour mix of the music feature (docs/knn.md); `histories`: earlier
        (question, answer) turns of each conversation."""
        options = GenerationSettings(**settings)
        kwargs = self._generate_kwargs(self._stacks(stacks), questions, knn, histories, options)
        if options.seed is not None:
            torch.manual_seed(options.seed)
        output = self.model.generate(**kwargs)
        eos = self.tokenizer.eos_token_id
        answers = []
        for row in output[:, kwargs["input_ids"].shape[1]:].tolist():
            if eos in row:
                row = row[:row.index(eos)]
            answers.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return answers

    @torch.inference_mode()
    def generate_rows(self, stacks: Inputs, questions: Sequence[str], histories: Sequence[Sequence[Turn]] | None,
                      streamer: Any, stopping_criteria: Any, **settings: Any) -> None:
        """generate() with the caller's streamer and per-row stopping criteria (the server's batches, whose rows
        end on their own limits or when their client leaves)."""
        options = GenerationSettings(**settings)
        kwargs = self._generate_kwargs(self._stacks(stacks), questions, None, histories, options)
        if options.seed is not None:
            torch.manual_seed(options.seed)
        self.model.generate(**kwargs, streamer=streamer, stopping_criteria=StoppingCriteriaList([stopping_criteria]))

    def answer(self, stack: Inputs, question: str, knn: KnnMix | None = None, history: Sequence[Turn] = (),
               **settings: Any) -> str:
        """The answer to one question about one (L+1, H) layer stack, or about {modality: stack} (several
        inputs at once with a multi-modal adapter)."""
        return self.answer_batch(self._one(stack), [question], knn, [history], **settings)[0]

    def stream(self, stack: Inputs, question: str, knn: KnnMix | None = None, history: Sequence[Turn] = (),
               **settings: Any) -> Iterator[str]:
        """The answer's text as it is generated, piece by piece (whole words where the tokenizer allows);
        the pieces join to answer()'s text up to surrounding whitespace, for the same settings and seed."""
        options = GenerationSettings(**settings)
        with torch.inference_mode():
            kwargs = self._generate_kwargs(self._one(stack), [question], knn, [history], options)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    if options.seed is not None:
                        torch.manual_seed(options.seed)
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as exc:  # handed to the reader below, which re-raises it
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise failure[0]
