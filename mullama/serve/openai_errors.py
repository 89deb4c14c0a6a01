"""The one place where a refused request becomes an HTTP status and OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`): the services' `RequestError` kinds, FastAPI's validation
errors, Starlette's routing errors, and anything unexpected (a 500 whose body never carries a trace).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mullama.serve.services.errors import (
    Busy,
    Failed,
    Invalid,
    NotFound,
    RequestError,
    TooLarge,
    Unauthorized,
    Unsupported,
)

# kind -> (HTTP status, OpenAI error type)
STATUS: dict[type[RequestError], tuple[int, str]] = {
    Invalid: (400, "invalid_request_error"),
    Unsupported: (400, "invalid_request_error"),
    Unauthorized: (401, "authentication_error"),
    NotFound: (404, "invalid_request_error"),
    TooLarge: (413, "invalid_request_error"),
    Busy: (429, "rate_limit_error"),
    Failed: (500, "server_error"),
}
ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}
log = logging.getLogger("mullama.serve")


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(error: RequestError) -> tuple[int, dict[str, Any]]:
    """(the HTTP status, OpenAI's error body) of a refused request."""
    status, kind = STATUS[type(error)]
    return status, error_body(error.message, kind, error.param, error.code)


def error_response(error: RequestError) -> JSONResponse:
    status, body = openai_error(error)
    return JSONResponse(body, status)


def validation_error(exc: RequestValidationError) -> Invalid:
    """The first thing wrong with a request body, named by its path (`messages[0].content`)."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return Invalid("the request body is not valid JSON", None, "invalid_json")
    param = _param(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return Invalid(message, param, "invalid_value")


def _param(location: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in location if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or None


async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(exc))


async def _routing(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body = error_body(str(exc.detail), "invalid_request_error", None, ROUTING_CODES.get(exc.status_code))
    return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(Failed("the server failed on this request; see its log"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _routing)
    app.add_exception_handler(Exception, _unexpected)
