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
import transformers
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mullama.data.qagen.instructions import FailedRequest
from mullama.errors import MullamaError
from mullama.runtime import quiet_transformers, refuse_remote_code, resolve_device, resolve_dtype

log = logging.getLogger("mullama.qa")
NOT_A_COMPLETION = "the endpoint's reply is not a chat completion"
MAX_REASON = 300  # characters of an endpoint's error kept in the failure log


class Backend(Protocol):
    name: str

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str | FailedRequest]: ...


def check_llm_folder(folder: str) -> None:
    """One line, before any weights load (and before a Ray cluster starts), for an --llm folder that cannot be
    run: not a model folder, needing its own code, or not a causal LM."""
    if not (Path(folder) / "config.json").is_file():
        raise MullamaError(f"--llm {folder} is not a Hugging Face model folder (no config.json); give a folder, "
                           "an http(s)://host/v1 endpoint, or 'template'")
    require_causal_lm(refuse_remote_code(folder, "--llm"), folder)


def require_causal_lm(config: dict[str, Any], folder: str) -> None:
    """Refuse, before any weights load, a folder whose model is not a text generator. A MusicGen folder's type
    has a causal-LM class too, but that class reads only one part (the decoder) of the folder's composite
    config; transformers itself takes a composite's part only when it is the text_config."""
    model_type = config.get("model_type")
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if causal is not None:
        folder_config = CONFIG_MAPPING[model_type]
        parts = getattr(folder_config, "sub_configs", None) or {}
        reads = getattr(transformers, causal).config_class
        if not parts or issubclass(folder_config, reads) or reads is parts.get("text_config"):
            return
    raise MullamaError(f"--llm {folder} is not a causal language model (model type {model_type!r}); give a "
                       "text LLM folder, an http(s)://host/v1 endpoint, or 'template'")


class LocalBackend:
    """A causal LM folder through transformers: prompts in its chat template when it has one, left-padded
    batches, sampling at the request's temperature with a seed per batch."""

    def __init__(self, folder: str, max_new_tokens: int, device: str = "auto", dtype: str = "auto"):
        check_llm_folder(folder)
        self.device = resolve_device(device)
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
                self.model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=resolve_dtype(dtype, self.device), trust_remote_code=False).to(self.device).eval()
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


def completion_text(reply: Any) -> tuple[str, str]:
    """(the first choice's text, "") of a chat completion, or ("", why the reply is none): the client returns
    whatever JSON came back without checking its shape."""
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "", f"{NOT_A_COMPLETION} (no choices)"
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        return "", f"{NOT_A_COMPLETION} (its message content is {type(content).__name__}, not text)"
    return content, ""


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
            except (ValueError, AttributeError):  # a body that is no JSON, or JSON of another shape
                listed = None
            if listed is not None and (not isinstance(listed, list)
                                       or not all(isinstance(getattr(m, "id", None), str) for m in listed)):
                listed = None
            if listed is None:
                raise MullamaError(f"the endpoint {url} did not answer its model list (GET /models) with JSON "
                                   "models; check --llm, or name the model with --llm-model")
            if not listed:
                raise MullamaError(f"the endpoint {url} lists no model; name one with --llm-model")
            model = listed[0].id
        self.name = model
        self.max_new_tokens = max_new_tokens
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="mullama-qa-http")

    def _one(self, prompt: str, temperature: float, seed: int) -> str | FailedRequest:
        """The reply's text, or why there is none: counted as a failed attempt, so the clip is asked again."""
        try:
            reply = self.client.chat.completions.create(
                model=self.name, messages=[{"role": "user", "content": prompt}], temperature=temperature,
                max_tokens=self.max_new_tokens, seed=seed)
        except openai.OpenAIError as exc:
            reason = f"the endpoint failed: {exc}"
        except ValueError as exc:  # a 200 whose body is not JSON
            reason = f"{NOT_A_COMPLETION} (not JSON: {exc})"
        else:
            content, reason = completion_text(reply)
            if not reason:
                return content.strip()
        log.warning("LLM request to %s failed: %s", self.url, reason)
        return FailedRequest(reason[:MAX_REASON])

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str | FailedRequest]:
        return list(self.pool.map(lambda item: self._one(item[1], temperature, seed + item[0]), enumerate(prompts)))


def make_backend(llm: str, model: str, api_key: str, max_new_tokens: int, concurrency: int, device: str,
                 dtype: str) -> Any:
    if llm.startswith(("http://", "https://")):
        return HttpBackend(llm, model, api_key, max_new_tokens, concurrency)
    return LocalBackend(llm, max_new_tokens, device, dtype)
