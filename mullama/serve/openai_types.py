"""The OpenAI Chat Completions request (and the /v1/similar and /v1/search requests) as this server reads them.

Supported: message content as text or `text` / `input_audio` parts, history, temperature, top_p,
max_tokens (or max_completion_tokens), seed, n=1, stream (+ stream_options.include_usage), and the extra
field `clip_id` (a stored clip, sent with the client's `extra_body`). Other OpenAI fields are accepted and
ignored, as clients send many by default. System messages are ignored: MU-LLaMA's prompt has no place for
them. What a request leaves out is filled from `ChatDefaults` (config.py): MU-LLaMA's, not OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputAudio(_Strict):
    data: Annotated[str, Field(strict=True)]
    format: Literal["wav", "mp3", "flac", "ogg"]


class ContentPart(_Strict):
    type: Literal["text", "input_audio"]
    text: Annotated[str, Field(strict=True)] | None = None
    input_audio: InputAudio | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(strict=True)] | list[ContentPart] | None = None


class AudioOutput(_Strict):
    """OpenAI's `audio` request parameter: the format of message.audio (the voice is accepted and unused: the
    audio is music)."""

    format: Literal["wav", "flac"] = "wav"
    voice: Annotated[str, Field(strict=True)] | None = None


class StreamOptions(_Strict):
    include_usage: Annotated[bool, Field(strict=True)] = False


class ChatRequest(_Strict):
    model: Annotated[str, Field(strict=True)]
    messages: list[Message] = Field(min_length=1)
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[Count, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[Count, Field(ge=1)] | None = None
    seed: Annotated[Count, Field(ge=0, le=MAX_SEED)] | None = None
    n: Annotated[Count, Field(ge=1, le=1)] = 1
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    clip_id: Annotated[str, Field(strict=True, min_length=1, max_length=1000)] | None = None
    modalities: list[Literal["text", "audio"]] | None = None  # "audio": music back as message.audio (--generator)
    audio: AudioOutput | None = None
    seconds: Annotated[Number, Field(gt=0)] | None = None  # extra_body: length of the music


class SimilarRequest(_Strict):
    clip_id: Annotated[str, Field(strict=True, min_length=1, max_length=1000)] | None = None
    input_audio: InputAudio | None = None
    k: Annotated[Count, Field(ge=1, le=100)] = 10


class SearchRequest(_Strict):
    query: Annotated[str, Field(strict=True, min_length=1, max_length=1000)]
    k: Annotated[Count, Field(ge=1, le=100)] = 10
