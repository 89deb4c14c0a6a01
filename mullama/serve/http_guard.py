"""The ASGI layer in front of the app: the API key, the body limit, the body's read timeout and request metrics,
before the app reads anything."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any


from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_errors import error_response
from mullama.serve.services.errors import RequestError, TimedOut, TooLarge, Unauthorized

OPEN_PATHS = ("/", "/health")  # the page (it asks for the key) and the probe; everything else needs the key


class HttpGuard:
    """ASGI wrapper, before the app reads anything: checks the API key (every path but the page, its static
    files and /health), refuses bodies over the limit (declared, or counted as they arrive) and bodies that take
    longer than `body_timeout` seconds to arrive (a stalled client would hold its connection and buffer), and
    counts every response."""

    def __init__(self, app: Any, max_body: int, metrics: ServerMetrics, api_key: str, body_timeout: float):
        self.app, self.max_body, self.metrics, self.body_timeout = app, max_body, metrics, body_timeout
        self.key = api_key.encode()

    def _authorized(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        """The key, sent as `Authorization: Bearer KEY`: the scheme in any case (RFC 7235), the key compared in
        constant time."""
        path = scope.get("path", "")
        if not self.key or path in OPEN_PATHS or path.startswith("/static/"):
            return True
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(b" "), self.key)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        headers = dict(scope.get("headers") or [])
        if not self._authorized(scope, headers):
            return await self._refuse(scope, receive, send, started, Unauthorized(
                "a valid API key is needed: send 'Authorization: Bearer KEY'"))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._refuse(scope, receive, send, started, self._too_large())
        chunks: list[bytes] = []
        size, more = 0, True
        deadline = started + self.body_timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await self._refuse(scope, receive, send, started, TimedOut(
                    f"the request body did not arrive within {self.body_timeout:g} s"))
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._refuse(scope, receive, send, started, self._too_large())
            more = message.get("more_body", False)
        await self._forward(scope, receive, send, started, b"".join(chunks))

    async def _forward(self, scope: dict, receive: Any, send: Any, started: float, body: bytes) -> None:
        """The app with the body read here replayed to it once, then the connection's own messages (a
        disconnect); the response's status counted."""
        replayed = False
        status = 500

        async def replay_then_receive() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def counted_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, replay_then_receive, counted_send)
        finally:
            self._count(scope, status, started)

    async def _refuse(self, scope: dict, receive: Any, send: Any, started: float, error: RequestError) -> None:
        response = error_response(error)
        await response(scope, receive, send)
        self._count(scope, response.status_code, started)

    def _too_large(self) -> TooLarge:
        return TooLarge(f"the request body is over this server's limit of {self.max_body / 1e6:g} MB", None,
                        "request_too_large")

    def _count(self, scope: dict, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", "other")
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.monotonic() - started)
