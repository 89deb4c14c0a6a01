"""The ways a service refuses a request, by what went wrong rather than by HTTP status.

Each carries OpenAI's `param` (the request field at fault) and `code` (a stable machine-readable reason);
mullama/serve/openai_errors.py maps each kind to its status and error body.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request this server refuses: a one-line `message` for the client, never a server path or a trace."""

    default_code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param
        self.code = code if code is not None else self.default_code


class Invalid(RequestError):
    """The request is malformed, or asks for more than this server allows."""


class Unsupported(RequestError):
    """The request needs something this server was not started with (a store, uploads, an index, a generator)."""


class NotFound(RequestError):
    """The request names a model, clip or file this server does not have."""


class TooLarge(RequestError):
    """The request, or the audio it carries, is over this server's size or length limit."""


class Unauthorized(RequestError):
    """The request lacks the server's API key."""

    default_code = "invalid_api_key"


class Busy(RequestError):
    """The server has as many requests waiting as it takes; the client should retry shortly."""

    default_code = "server_busy"


class Failed(RequestError):
    """The server failed on a valid request (a failed generation, or a bug): the client's fault is not implied."""
