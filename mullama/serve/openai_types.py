"""The OpenAI Chat Completions request as this server reads it, and its error shape.

Supported: message content as text or `text` / `input_audio` parts, history, temperature, top_p,
max_tokens (or max_completion_tokens), seed, n=1, stream (+ stream_options.include_usage), and the extra
field `clip_id` (a stored clip, sent with the client's `extra_body`). Other OpenAI fields are accepted and
ignored, as clients send many by default. System messages are ignored: MU-LLaMA's prompt has no place for
them. Defaults follow MU-LLaMA, not OpenAI: temperature 0.6, top_p 0.8.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mullama.model.prompts import Turn

MAX_SEED = 2**63 - 1


class ApiError(Exception):
    """A request the server refuses: OpenAI's error body with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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


@dataclass
class Conversation:
    question: str
    history: list[Turn]
    audio: InputAudio | None  # the track, when it is uploaded rather than named by clip_id


def _text(message: Message, index: int) -> tuple[str, list[InputAudio]]:
    text, audio = _parts(message, index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) is valid JSON but no text
        raise ApiError(400, f"messages[{index}]: the text is not valid Unicode", "messages") from None
    return text, audio


def _parts(message: Message, index: int) -> tuple[str, list[InputAudio]]:
    if isinstance(message.content, str) or message.content is None:
        return (message.content or "").strip(), []
    texts, audio = [], []
    for part in message.content:
        if part.type == "text":
            if part.text is None:
                raise ApiError(400, f"messages[{index}]: a text part needs 'text'", "messages")
            texts.append(part.text)
        else:
            if part.input_audio is None:
                raise ApiError(400, f"messages[{index}]: an input_audio part needs 'input_audio'", "messages")
            if message.role != "user":
                raise ApiError(400, f"messages[{index}]: only user messages may carry audio", "messages")
            audio.append(part.input_audio)
    return " ".join(text.strip() for text in texts if text.strip()), audio


def conversation(request: ChatRequest, max_history: int) -> Conversation:
    """The last user message as the question, earlier user/assistant pairs as history, and the one track."""
    turns: list[tuple[str, str]] = []
    audio: list[InputAudio] = []
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            continue
        text, parts = _text(message, index)
        audio += parts
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if message.role != expected:
            raise ApiError(400, f"messages[{index}] is a {message.role} message where a {expected} message was "
                                "expected: user and assistant messages must alternate, starting and ending with user",
                           "messages")
        if message.role == "user" and not text:
            raise ApiError(400, f"messages[{index}]: a user message needs text (the question)", "messages")
        turns.append((message.role, text))
    if not turns or len(turns) % 2 == 0:
        raise ApiError(400, "messages must end with a user message (the question)", "messages")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    if len(history) > max_history:
        raise ApiError(400, f"the conversation has {len(history)} earlier turns; this server takes at most "
                            f"{max_history}", "messages", "history_too_long")
    if len(audio) > 1:
        raise ApiError(400, f"the conversation carries {len(audio)} audio parts; send one track", "messages")
    return Conversation(turns[-1][1], history, audio[0] if audio else None)


def audio_bytes(audio: InputAudio, param: str) -> bytes:
    try:
        data = base64.b64decode(audio.data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}.data is not valid base64", param, "invalid_base64") from None
    if not data:
        raise ApiError(400, f"{param}.data is empty", param, "empty_audio")
    return data
