"""The ASGI layer in front of the app: the API key, the body limit and request metrics, before the app reads
anything."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi.responses import JSONResponse

from mullama.serve.metrics import ServerMetrics
from mullama.serve.openai_errors import error_response
from mullama.serve.services.errors import RequestError, TooLarge, Unauthorized

OPEN_PATHS = ("/", "/health")  # the page (it asks for the key) and the probe; everything else needs the key


class HttpGuard:
    """ASGI wrapper, before the app reads anything: checks the API key (every path but the page, its static
    files and /health), refuses bodies over the limit (declared, or counted as they arrive), and counts every
    response."""

    def __init__(self, app: Any, max_body: int, metrics: ServerMetrics, api_key: str):
        self.app, self.max_body, self.metrics = app, max_body, metrics
        self.expected = f"Bearer {api_key}".encode() if api_key else b""

    def _authorized(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        path = scope.get("path", "")
        if not self.expected or path in OPEN_PATHS or path.startswith("/static/"):
            return True
        return hmac.compare_digest(headers.get(b"authorization", b""), self.expected)

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
        while more:
            message = await receive()
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
