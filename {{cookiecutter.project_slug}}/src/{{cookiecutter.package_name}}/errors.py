"""The service's error responses, in one place.

Each function builds a new object per call: a module-level exception or response reused across
requests would keep the last request's traceback (and with it its frames and data) alive.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics

SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 1
# On every error answer and on every answer of the token routes: nothing a cache should keep
# (RFC 6749, section 5.1, asks it of token responses, errors included).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# `extra="forbid"` documents each body as complete (`additionalProperties: false`).
class Error(BaseModel):
    """The body of every error answer except 422."""

    model_config = ConfigDict(extra="forbid")
    detail: str


class ValidationProblem(BaseModel):
    """One reason a request was refused with 422: where, what, and pydantic's error type."""

    model_config = ConfigDict(extra="forbid")
    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """The body of a 422. It never holds the submitted values."""

    model_config = ConfigDict(extra="forbid")
    detail: list[ValidationProblem]


def _header(description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": schema_type}}


_CHALLENGE = _header("RFC 6750 challenge")
_RETRY_AFTER = _header("Seconds to wait before trying again", "integer")

# What each error status looks like, for `responses()`. A new status gets a row here.
_ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: {"model": Error, "description": "Unparsable body, or more than one Authorization header"},
    401: {
        "model": Error,
        "description": "Missing, invalid or expired credentials",
        "headers": {"WWW-Authenticate": _CHALLENGE},
    },
    403: {
        "model": Error,
        "description": "The token lacks a scope this route needs",
        "headers": {"WWW-Authenticate": _CHALLENGE},
    },
    # Answered by the server before the app sees the request (see server.py).
    413: {"model": Error, "description": "The body is over 64 KiB"},
    422: {"model": InvalidRequest, "description": "A parameter or body field is missing or bad"},
    429: {
        "model": Error,
        "description": "Rate limit reached",
        "headers": {
            "Retry-After": _RETRY_AFTER,
            "RateLimit": _header("Remaining quota and seconds to reset (IETF draft)"),
            "RateLimit-Policy": _header("The limit that applies (IETF draft)"),
        },
    },
    503: {
        "model": Error,
        "description": "Redis did not answer in time; retry shortly",
        "headers": {"Retry-After": _RETRY_AFTER},
    },
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries, body and headers, for the error statuses a route can answer:
    `@router.get("/things", responses=errors.responses(400, 401, 429, 503))`. Each call
    returns its own copy, so a route may change a description without changing every route's."""
    return {status: copy.deepcopy(_ERROR_RESPONSES[status]) for status in statuses}


def not_authenticated() -> HTTPException:
    """401 for a request with no credentials at all: a bare challenge, no error code
    (RFC 6750, section 3.1)."""
    return HTTPException(
        status_code=401, detail="Not authenticated", headers={"WWW-Authenticate": "Bearer"}
    )


def invalid_token() -> HTTPException:
    """401 for any token problem (RFC 6750). The detail never says which check failed."""
    return HTTPException(
        status_code=401,
        detail="Invalid or expired token",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def several_authorizations() -> HTTPException:
    """400 for a request with more than one Authorization header: malformed, whatever they
    hold (RFC 6750, section 3.1: `invalid_request`), so no token in it is looked at."""
    return HTTPException(
        status_code=400,
        detail="More than one Authorization header",
        headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
    )


def login_failed() -> HTTPException:
    """401 for a failed login; an unknown user and a wrong password get this same answer.
    Counted here, the one place every failed login passes (`auth_rejections_total`)."""
    metrics.auth_rejected("login")
    return HTTPException(
        status_code=401,
        detail="Incorrect username or password",
        headers={"WWW-Authenticate": "Bearer"},
    )


def insufficient_scope(scopes: Iterable[str]) -> HTTPException:
    """403: the token is good but lacks a scope the route needs (RFC 6750, section 3.1)."""
    needed = " ".join(sorted(scopes))
    return HTTPException(
        status_code=403,
        detail="Insufficient scope",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'},
    )


def rate_limited(headers: Mapping[str, str]) -> HTTPException:
    """429 with `Retry-After` (whole seconds) and the RateLimit headers."""
    return HTTPException(status_code=429, detail="Too many requests", headers=dict(headers))


def service_unavailable() -> JSONResponse:
    """503 for a Redis that does not answer in time; the client may retry shortly."""
    return JSONResponse(
        status_code=503,
        content={"detail": "Service temporarily unavailable"},
        headers={"Retry-After": str(SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS), **NO_STORE},
    )


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """422 naming each problem by location, message and type only.

    FastAPI's own answer copies pydantic's `input` (and `ctx`): the submitted values, tokens and
    passwords included, and text that cannot even be encoded (a lone surrogate from a JSON
    `\\ud800`), which turned a bad request into a 500 whose traceback printed the body.
    Nothing here is logged, and ASCII-only JSON always encodes.
    """
    if not isinstance(exc, RequestValidationError):  # registered for that class only
        raise exc
    problems = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error["loc"]],
            "msg": str(error["msg"]),
            "type": str(error["type"]),
        }
        for error in exc.errors()
    ]
    body = json.dumps({"detail": problems}, ensure_ascii=True, separators=(",", ":"))
    return Response(body, status_code=422, media_type="application/json", headers=NO_STORE)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    request.app.state.outage.failed(exc)  # logged once per outage, not once per request
    return service_unavailable()


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer to an HTTPException (401, 403, 429, and its 400, 404, 405), marked
    not to be stored."""
    if not isinstance(exc, StarletteHTTPException):  # registered for that class only
        raise exc
    response = await http_exception_handler(request, exc)
    response.headers.update(NO_STORE)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Mark every HTTP error no-store; invalid requests get a 422 that echoes nothing; Redis
    failures (down, too slow, out of memory, read-only, failing over) get a 503."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for error in (RedisError, TimeoutError):
        app.add_exception_handler(error, _redis_unavailable)
