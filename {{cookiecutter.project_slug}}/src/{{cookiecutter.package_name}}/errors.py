"""The service's error answers, in one place: the 400/401/403/429/503 each route raises or
returns, the token endpoint's RFC 6749 errors, and what each looks like in OpenAPI
(`responses()`). The handlers that turn them into responses are in `error_handlers.py`; the
body of a 422 is `validation_problems.py`'s.

Each function builds a new object per call: a module-level exception or response reused across
requests would keep the last request's traceback (and with it its frames and data) alive.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from . import metrics
from .validation_problems import InvalidRequest

SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 1
# On every error answer and on every answer of the token routes: nothing a cache should keep
# (RFC 6749, section 5.1, asks it of token responses, errors included).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# `extra="forbid"` documents each body as complete (`additionalProperties: false`).
class Error(BaseModel):
    """The body of every error answer except 422."""

    model_config = ConfigDict(extra="forbid")
    detail: str


class TokenError(BaseModel):
    """RFC 6749 section 5.2: how `POST /auth/token` refuses a client, a grant type, a grant or
    a scope. (A wrong user name or password keeps its `{"detail": ...}` answer.)"""

    model_config = ConfigDict(extra="forbid")
    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unsupported_grant_type",
        "invalid_scope",
    ]
    error_description: str


class OAuthError(Exception):
    """Raised by the token endpoint's grants; answered with a `TokenError` body, no-store."""

    def __init__(
        self, status: int, error: str, description: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.headers = dict(headers or {})


# The challenge of a failed client authentication. RFC 6749 (section 5.2) asks for it when the
# client used Basic, and RFC 9110 (section 15.5.2) for a challenge on every 401: Basic is the
# one HTTP scheme the token endpoint takes, so every `invalid_client` carries it. RFC 7617
# makes `realm` required.
BASIC_CHALLENGE = 'Basic realm="token", charset="UTF-8"'


def invalid_client() -> OAuthError:
    """401: an unknown client, a wrong or missing secret, a disabled client, or a client id the
    grant does not take; all the same answer. Counted as `client` in `auth_rejections_total`."""
    metrics.auth_rejected("client")
    return OAuthError(
        401,
        "invalid_client",
        "Client authentication failed",
        {"WWW-Authenticate": BASIC_CHALLENGE},
    )


def invalid_request(description: str) -> OAuthError:
    """400: a token request this endpoint cannot read (a fixed description, never input)."""
    return OAuthError(400, "invalid_request", description)


def unsupported_grant_type() -> OAuthError:
    return OAuthError(
        400,
        "unsupported_grant_type",
        "grant_type must be password, refresh_token or client_credentials",
    )


def invalid_grant() -> OAuthError:
    """400: a refresh token that is not (or no longer) good, at `POST /auth/token`."""
    return OAuthError(400, "invalid_grant", "The refresh token is invalid or expired")


def invalid_scope() -> OAuthError:
    return OAuthError(400, "invalid_scope", "The requested scope exceeds the client's scopes")


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
    # Answered by the server before the app sees the request (server.py, edge_limits.py).
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


def token_endpoint_responses() -> dict[int | str, dict[str, Any]]:
    """`responses=` of `POST /auth/token`: its 400 and 401 are either body, by grant."""
    listed = responses(400, 401, 413, 422, 429, 503)
    listed[400]["model"] = Error | TokenError
    listed[400]["description"] = (
        "Unparsable body; or (RFC 6749) an unsupported grant type, a bad refresh token, a "
        "scope beyond the client's, or a malformed request"
    )
    listed[401]["model"] = Error | TokenError
    listed[401]["headers"]["WWW-Authenticate"]["description"] = (
        "Bearer after a wrong user name or password; Basic (RFC 7617) for invalid_client"
    )
    listed[401]["description"] = (
        "A wrong user name or password; or (RFC 6749 invalid_client) a client that failed "
        "to authenticate"
    )
    return listed


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
