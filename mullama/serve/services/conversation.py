"""A chat request's messages read as MU-LLaMA's prompt needs them: the question, the earlier turns, the one track.

System and developer messages are ignored: MU-LLaMA's prompt has no place for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mullama.model.prompts import Turn
from mullama.serve.openai_types import ChatRequest, InputAudio, Message
from mullama.serve.services.errors import Invalid


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
        raise Invalid(f"messages[{index}]: the text is not valid Unicode", "messages") from None
    return text, audio


def _parts(message: Message, index: int) -> tuple[str, list[InputAudio]]:
    if isinstance(message.content, str) or message.content is None:
        return (message.content or "").strip(), []
    texts, audio = [], []
    for part in message.content:
        if part.type == "text":
            if part.text is None:
                raise Invalid(f"messages[{index}]: a text part needs 'text'", "messages")
            texts.append(part.text)
        else:
            if part.input_audio is None:
                raise Invalid(f"messages[{index}]: an input_audio part needs 'input_audio'", "messages")
            if message.role != "user":
                raise Invalid(f"messages[{index}]: only user messages may carry audio", "messages")
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
            raise Invalid(f"messages[{index}] is a {message.role} message where a {expected} message was "
                          "expected: user and assistant messages must alternate, starting and ending with user",
                          "messages")
        if message.role == "user" and not text:
            raise Invalid(f"messages[{index}]: a user message needs text (the question)", "messages")
        turns.append((message.role, text))
    if not turns or len(turns) % 2 == 0:
        raise Invalid("messages must end with a user message (the question)", "messages")
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    if len(history) > max_history:
        raise Invalid(f"the conversation has {len(history)} earlier turns; this server takes at most "
                      f"{max_history}", "messages", "history_too_long")
    if len(audio) > 1:
        raise Invalid(f"the conversation carries {len(audio)} audio parts; send one track", "messages")
    return Conversation(turns[-1][1], history, audio[0] if audio else None)
