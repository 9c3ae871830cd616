"""The service's error responses, in one place.

Each function builds a new object per call: a module-level exception or response reused across
requests would keep the last request's traceback (and with it its frames and data) alive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 1
# On every error answer and on every answer of the token routes: nothing a cache should keep
# (RFC 6749, section 5.1, asks it of token responses, errors included).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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


def login_failed() -> HTTPException:
    """401 for a failed login; an unknown user and a wrong password get this same answer."""
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
    """Mark every HTTP error no-store, and map Redis failures (down, too slow, out of memory,
    read-only, failing over) to 503."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in (RedisError, TimeoutError):
        app.add_exception_handler(error, _redis_unavailable)
