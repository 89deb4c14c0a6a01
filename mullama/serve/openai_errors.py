"""The one place where a refused request becomes an HTTP status and OpenAI's error body
(`{"error": {"message", "type", "param", "code"}}`): the services' `RequestError` kinds, FastAPI's validation
errors, Starlette's routing errors, and anything unexpected (a 500 whose body never carries a trace).
"""

from __future__ import annotations

import logging
import re
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
    TimedOut,
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
    TimedOut: (408, "invalid_request_error"),
    TooLarge: (413, "invalid_request_error"),
    Busy: (429, "rate_limit_error"),
    Failed: (500, "server_error"),
}
UNION_TAGS = {"str", "int", "float", "bool", "bytes", "none", "list", "dict"}  # pydantic's tags of plain types
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
    """What is wrong with a request body, named by its path (`messages[0].content[1].input_audio.data`): of the
    errors pydantic reports (one per member of a union), the one that got deepest into the body."""
    errors = exc.errors() or [{"loc": (), "msg": "invalid request"}]
    if errors[0].get("type") == "json_invalid":
        return Invalid("the request body is not valid JSON", None, "invalid_json")
    paths = [_fields(tuple(error.get("loc", ()))) for error in errors]
    deepest = max(range(len(errors)), key=lambda n: len(paths[n]))  # the first of the deepest
    param = _param(paths[deepest])
    message = f"{param}: {errors[deepest].get('msg')}" if param else str(errors[deepest].get("msg"))
    return Invalid(message, param, "invalid_value")


def _fields(location: tuple[Any, ...]) -> list[str]:
    """The body's field names and list indices in `location`, without "body" and without the tags pydantic adds
    for the member of a union it tried (`str`, `list[ContentPart]`, `function-after[...]`): the request's
    fields are lower-case identifiers."""
    return [str(p) for p in location if p != "body" and (isinstance(p, int) or re.fullmatch(r"[a-z_][a-z0-9_]*", p))
            and p not in UNION_TAGS]


def _param(parts: list[str]) -> str | None:
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
