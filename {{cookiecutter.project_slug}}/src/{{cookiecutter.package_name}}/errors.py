"""The service's error responses, in one place.

Each function builds a new object per call: a module-level exception or response reused across
requests would keep the last request's traceback (and with it its frames and data) alive.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Literal, get_args

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from pydantic_core.core_schema import ErrorType
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from . import metrics
from .state import app_state

SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 1
# On every error answer and on every answer of the token routes: nothing a cache should keep
# (RFC 6749, section 5.1, asks it of token responses, errors included).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# A 422 lists the first problems only: a 64 KiB body can hold thousands of mistakes, and listing
# each made an answer ten times the size of the request (7,708 problems, 674 KB).
MAX_PROBLEMS = 10
# ...and stops before this many bytes, whatever the problems hold.
MAX_INVALID_REQUEST_BYTES = 2048
# A `loc` goes at most this deep (a recursive model's depth is the client's choice) and names
# only declared names up to this long; a message and a type are cut at these lengths. With ASCII
# names and types (pydantic's are), one problem is then at most ~1.7 KiB even with a message
# written all in `\u` escapes, so the first problem always fits in `MAX_INVALID_REQUEST_BYTES`.
MAX_LOC_PARTS = 10
MAX_NAME_CHARS = 64
MAX_MESSAGE_CHARS = 160
MAX_TYPE_CHARS = 64
# `loc` starts with where the problem is; these are FastAPI's names for the places.
LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
# Error types pydantic-core defines: their messages are its templates. Any other type is a
# custom error (`PydanticCustomError`), whose message is whatever the code wrote, input included.
PYDANTIC_ERROR_TYPES = frozenset(get_args(ErrorType))
# `ctx` entries pydantic fills from the schema (a bound, a pattern, the allowed values, a class
# name, ...), never from the input. A message whose `ctx` holds only these, and numbers, cannot
# quote what was sent.
SCHEMA_CONTEXT = frozenset(
    {
        "class",
        "class_name",
        "decimal_places",
        "discriminator",
        "expected",
        "expected_plural",
        "expected_schemes",
        "expected_tags",
        "expected_version",
        "field_type",
        "ge",
        "gt",
        "le",
        "lt",
        "max_digits",
        "max_length",
        "method_name",
        "min_length",
        "multiple_of",
        "pattern",
        "tz_expected",
        "whole_digits",
    }
)
# What a problem says when pydantic's message would hold input-derived text (the `error` of a
# validator or a parser, a union tag, an attribute name): the message's fixed part.
GENERIC_MESSAGES = {
    "assertion_error": "Assertion failed",
    "bytes_invalid_encoding": "Data should be valid in its encoding",
    "date_from_datetime_parsing": "Input should be a valid date or datetime",
    "date_parsing": "Input should be a valid date in the format YYYY-MM-DD",
    "datetime_from_date_parsing": "Input should be a valid datetime or date",
    "datetime_object_invalid": "Invalid datetime object",
    "datetime_parsing": "Input should be a valid datetime",
    "get_attribute_error": "Error extracting attribute",
    "iteration_error": "Error iterating over object",
    "json_invalid": "Invalid JSON",
    "mapping_type": "Input should be a valid mapping",
    "no_such_attribute": "Object has no such attribute",
    "time_delta_parsing": "Input should be a valid timedelta",
    "time_parsing": "Input should be in a valid time format",
    "union_tag_invalid": "Input tag does not match any of the expected tags",
    "url_parsing": "Input should be a valid URL",
    "url_syntax_violation": "Input violated strict URL syntax rules",
    "uuid_parsing": "Input should be a valid UUID",
    "value_error": "Value error",
}
GENERIC_MESSAGE = "Invalid value"
# The methods a 405's `Allow` is computed from (RFC 9110's, and PATCH), in this order.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


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
    """The body of a 422. It holds nothing the client chose: `loc` names only what the schema
    declares (an unknown key is reported at its parent, without its name), and a message that
    would quote the input is replaced by a fixed one. At most the first 10 problems, and at most
    2 KiB in all."""

    model_config = ConfigDict(extra="forbid")
    detail: list[ValidationProblem]


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


async def _oauth_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, OAuthError):  # registered for that class only
        raise exc
    body = TokenError.model_validate({"error": exc.error, "error_description": exc.description})
    return JSONResponse(
        status_code=exc.status,
        content=body.model_dump(),
        headers={**exc.headers, **NO_STORE},
    )


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


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """422 naming each problem by location, message and type only, and nothing the client chose.

    FastAPI's own answer copies pydantic's `input` (and `ctx`): the submitted values, tokens and
    passwords included, and text that cannot even be encoded (a lone surrogate from a JSON
    `\\ud800`), which turned a bad request into a 500 whose traceback printed the body. Pydantic's
    `loc` and `msg` hold client text too, and this handler leaves it out:

    - `loc` is cut at its first part that is neither an int (a list index, a JSON error's
      position) nor a name the app declares (`declared_names`): an unknown key, a key of a
      `dict[str, X]`, a union member's label. The problem is then reported at the parent.
    - `msg` is pydantic's own only when it is built from the schema alone: a pydantic-core error
      type whose `ctx` holds only numbers and schema-derived entries (`SCHEMA_CONTEXT`: a bound,
      a `pattern`, the `expected` values). Otherwise (a validator's text, a parser's complaint,
      a union tag, any custom error) it is the fixed part of that type's message.
    - Problems that read the same after this are listed once; the list stops at `MAX_PROBLEMS`
      and before `MAX_INVALID_REQUEST_BYTES`.

    Nothing here is logged, and ASCII-only JSON always encodes.
    """
    if not isinstance(exc, RequestValidationError):  # registered for that class only
        raise exc
    names = declared_names(request.app)
    listed: list[str] = []
    size = len('{"detail":[]}')
    for problem in _problems(exc.errors(), names):
        if problem in listed:
            continue
        cost = len(problem) + (1 if listed else 0)  # the comma
        if size + cost > MAX_INVALID_REQUEST_BYTES:
            break
        listed.append(problem)
        size += cost
        if len(listed) == MAX_PROBLEMS:
            break
    body = '{"detail":[' + ",".join(listed) + "]}"
    return Response(body, status_code=422, media_type="application/json", headers=NO_STORE)


def _problems(errors: Iterable[Mapping[str, Any]], names: frozenset[str]) -> Iterator[str]:
    """Each of pydantic's errors as one problem, serialized (compact, ASCII-only JSON)."""
    for error in errors:
        problem = {
            "loc": _location(error["loc"], names),
            "msg": _message(error)[:MAX_MESSAGE_CHARS],
            "type": str(error["type"])[:MAX_TYPE_CHARS],
        }
        yield json.dumps(problem, ensure_ascii=True, separators=(",", ":"))


def _location(loc: Iterable[Any], names: frozenset[str]) -> list[str | int]:
    kept: list[str | int] = []
    for part in loc:
        if len(kept) == MAX_LOC_PARTS:
            break
        declared = isinstance(part, str) and part in names
        if not (declared or (isinstance(part, int) and not isinstance(part, bool))):
            break
        kept.append(part)
    return kept


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error["type"])
    context = error.get("ctx") or {}
    from_schema = kind in PYDANTIC_ERROR_TYPES and all(
        key in SCHEMA_CONTEXT or value is None or isinstance(value, (int, float, Decimal))
        for key, value in context.items()
    )
    if from_schema:
        return str(error["msg"])
    return GENERIC_MESSAGES.get(kind, GENERIC_MESSAGE)


def declared_names(app: FastAPI) -> frozenset[str]:
    """Every parameter name and schema property name in the app's OpenAPI document (built even
    when `APP_DOCS` is off), plus FastAPI's location names: what a 422's `loc` may name.

    Made at the first 422 and kept in the app's state. Its size is set by the code (the routes and
    models), never by requests, so keeping it bounds nothing new. Names that are not short ASCII
    are left out, which keeps every 422 ASCII and its size provable."""
    state = app_state(app)
    names = state.declared_names
    if names is None:
        found = set(LOCATIONS)
        found.update(_names_in(app.openapi()))
        names = frozenset(name for name in found if len(name) <= MAX_NAME_CHARS and name.isascii())
        state.declared_names = names
    return names


def _names_in(document: Any) -> Iterator[str]:
    """The keys of every `properties` and the `name` of every entry in `parameters`, anywhere in
    the document (all of it comes from the code)."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                yield from (name for name in properties if isinstance(name, str))
            parameters = node.get("parameters")
            if isinstance(parameters, list):
                for parameter in parameters:
                    if isinstance(parameter, dict) and isinstance(parameter.get("name"), str):
                        yield parameter["name"]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


async def _redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    app_state(request).stores.outage.failed(exc)  # logged once per outage, not once per request
    return service_unavailable()


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer to an HTTPException (401, 403, 429, and its 400, 404, 405), marked
    not to be stored; a 405's `Allow` lists every method the path serves."""
    if not isinstance(exc, StarletteHTTPException):  # registered for that class only
        raise exc
    response = await http_exception_handler(request, exc)
    response.headers.update(NO_STORE)
    if exc.status_code == 405:
        raised = (exc.headers or {}).get("Allow", "")
        allowed = allowed_methods(request.app, request.scope, raised)
        if allowed:
            response.headers["Allow"] = allowed
    return response


def allowed_methods(app: FastAPI, scope: Scope, raised: str = "") -> str:
    """The methods the request's path is served with, for a 405's `Allow` (RFC 9110, 15.5.6).

    Starlette raises 405 with the methods of the first route whose path matched; a path can
    have more than one route (GET and POST /items are two). So each method is tried against
    every route, as the router would try it, and `raised` (what the 405 named) is kept. A mount
    is not tried: the app under it raised the 405 and named its own methods (static files name
    GET and HEAD)."""
    methods = {method.strip().upper() for method in raised.split(",") if method.strip()}
    # The path as the app's router saw it: a mount on the way has extended `root_path` since.
    root_path = scope.get("app_root_path", scope.get("root_path", ""))
    probe = {"type": "http", "path": scope["path"], "root_path": root_path}
    for route in app.router.routes:
        if isinstance(route, Mount):
            continue
        for method in HTTP_METHODS:
            # A new scope for each try: matching writes into the scope it is given.
            if route.matches({**probe, "method": method})[0] is Match.FULL:
                methods.add(method)
    known = [method for method in HTTP_METHODS if method in methods]
    return ", ".join(known + sorted(methods.difference(HTTP_METHODS)))


def install_error_handlers(app: FastAPI) -> None:
    """Mark every HTTP error no-store; invalid requests get a 422 that echoes nothing; Redis
    failures (down, too slow, out of memory, read-only, failing over) get a 503."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(OAuthError, _oauth_error)
    for error in (RedisError, TimeoutError):
        app.add_exception_handler(error, _redis_unavailable)
