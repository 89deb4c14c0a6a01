"""LLMs that answer the generation prompts: a local Hugging Face model (batched `generate`) or any
OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server; concurrent requests). Both take a list of prompts
and return one text each; a request that fails returns "" so the clip is retried, never the whole run stopped.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import openai
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mullama.errors import MullamaError
from mullama.runtime import quiet_transformers, resolve_device, resolve_dtype

log = logging.getLogger("mullama.qa")


class Backend(Protocol):
    name: str

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str]: ...


class LocalBackend:
    """A causal LM folder through transformers: prompts in its chat template when it has one, left-padded
    batches, sampling at the request's temperature with a seed per batch."""

    def __init__(self, folder: str, max_new_tokens: int, device: str = "auto", dtype: str = "auto"):
        if not (Path(folder) / "config.json").is_file():
            raise MullamaError(f"--llm {folder} is not a Hugging Face model folder (no config.json); give a folder, "
                               "an http(s)://host/v1 endpoint, or 'template'")
        self.device = resolve_device(device)
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(folder)
                self.model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=resolve_dtype(dtype, self.device)).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise MullamaError(f"cannot load the LLM in {folder}: {exc}") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = max_new_tokens
        self.name = Path(folder).resolve().name

    def format(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{prompt}\n\n"

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str]:
        texts = [self.format(prompt) for prompt in prompts]
        has_bos_in_template = bool(getattr(self.tokenizer, "chat_template", None))
        batch = self.tokenizer(texts, return_tensors="pt", padding=True,
                               add_special_tokens=not has_bos_in_template).to(self.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(**batch, do_sample=temperature > 0, temperature=temperature or None,
                                         top_p=1.0, top_k=0, max_new_tokens=self.max_new_tokens,
                                         pad_token_id=self.tokenizer.pad_token_id)
        new = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


class HttpBackend:
    """An OpenAI-compatible chat endpoint through the official client, `concurrency` requests at a time."""

    def __init__(self, url: str, model: str, api_key: str, max_new_tokens: int, concurrency: int,
                 timeout: float = 600.0):
        self.client = openai.OpenAI(base_url=url, api_key=api_key or "none", max_retries=2, timeout=timeout)
        self.url = url
        if not model:
            try:
                listed = self.client.models.list().data
            except openai.OpenAIError as exc:
                raise MullamaError(f"cannot reach the LLM endpoint {url} ({type(exc).__name__}); check --llm, or "
                                   "name the model with --llm-model") from None
            if not listed:
                raise MullamaError(f"the endpoint {url} lists no model; name one with --llm-model")
            model = listed[0].id
        self.name = model
        self.max_new_tokens = max_new_tokens
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mullama-qa-http")

    def _one(self, prompt: str, temperature: float, seed: int) -> str:
        try:
            reply = self.client.chat.completions.create(
                model=self.name, messages=[{"role": "user", "content": prompt}], temperature=temperature,
                max_tokens=self.max_new_tokens, seed=seed)
            return (reply.choices[0].message.content or "").strip()
        except openai.OpenAIError as exc:  # counted as a failed attempt; the clip is asked again
            log.warning("LLM request to %s failed: %s", self.url, exc)
            return ""

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str]:
        return list(self.pool.map(lambda item: self._one(item[1], temperature, seed + item[0]), enumerate(prompts)))


def make_backend(llm: str, model: str, api_key: str, max_new_tokens: int, concurrency: int, device: str,
                 dtype: str) -> Any:
    if llm.startswith(("http://", "https://")):
        return HttpBackend(llm, model, api_key, max_new_tokens, concurrency)
    return LocalBackend(llm, max_new_tokens, device, dtype)
