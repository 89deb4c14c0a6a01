"""OpenAI's response objects for one completion: a whole `chat.completion` (text, or music as message.audio) and
the `chat.completion.chunk` server-sent events of a streamed one."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from mullama.serve.engine import Completion

AUDIO_EXPIRES_S = 3600  # message.audio's expires_at: the server keeps nothing, so any future time is honest
DONE_EVENT = "data: [DONE]\n\n"


def usage(completion: Completion) -> dict[str, int]:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def event(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Reply:
    """OpenAI's response objects for one completion id."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, completion: Completion) -> dict[str, Any]:
        return {**self.head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                             "finish_reason": completion.finish_reason, "logprobs": None}],
                "usage": usage(completion)}

    def music(self, data: bytes) -> dict[str, Any]:
        """Encoded audio as message.audio (OpenAI's audio output); music costs no text tokens."""
        audio = {"id": f"audio_{uuid.uuid4().hex}", "data": base64.b64encode(data).decode(), "transcript": "",
                 "expires_at": int(time.time()) + AUDIO_EXPIRES_S}
        return {**self.head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "audio": audio},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return event({**self.head("chat.completion.chunk"),
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]})

    def usage_chunk(self, completion: Completion) -> str:
        return event({**self.head("chat.completion.chunk"), "choices": [], "usage": usage(completion)})
