"""The one model a server serves: the loaded MusicLlama, the id clients send, its card and its context length."""

from __future__ import annotations

import time
from typing import Any

from mullama.model.music_llama import MusicLlama
from mullama.model.prompts import prompt_ids
from mullama.serve.services.conversation import Conversation
from mullama.serve.services.errors import NotFound

DEFAULT_CONTEXT = 4096  # LLaMA-2's positions, for a config that does not say


class ServedModel:
    def __init__(self, model: MusicLlama, name: str):
        self.model, self.name = model, name
        self.created = int(time.time())

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.model.config, "max_position_embeddings", DEFAULT_CONTEXT))

    def card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "mullama"}

    def check(self, model_id: str) -> None:
        """Refuses a request for another model than this one."""
        if model_id != self.name:
            raise NotFound(f"model {model_id!r} does not exist; this server serves {self.name!r}", "model",
                           "model_not_found")

    def prompt(self, talk: Conversation) -> list[int]:
        """The prompt's token ids, history first: what generation starts from."""
        return prompt_ids(self.model.tokenizer, talk.question, self.model.prompt_format, talk.history)
