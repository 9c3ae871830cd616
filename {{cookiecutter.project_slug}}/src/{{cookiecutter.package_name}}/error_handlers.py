"""The exception handlers installed on the app: each turns an exception into its answer, and
every answer is marked not to be stored (`errors.NO_STORE`).

- `HTTPException` (401, 403, 429, and FastAPI's 400, 404, 405): FastAPI's own answer; a 405's
  `Allow` lists every method the path serves.
- `RequestValidationError`: a 422 that echoes nothing (`validation_problems.py`).
- `errors.OAuthError`: the token endpoint's RFC 6749 answer.
- Redis failures: a 503, the outage logged once.

Like the answers themselves, every response is built per call.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from .errors import NO_STORE, OAuthError, TokenError, service_unavailable
from .state import app_state
from .validation_problems import declared_names, invalid_request_body

# The methods a 405's `Allow` is computed from (RFC 9110's, and PATCH), in this order.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


async def _oauth_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, OAuthError):  # registered for that class only
        raise exc
    body = TokenError.model_validate({"error": exc.error, "error_description": exc.description})
    return JSONResponse(
        status_code=exc.status,
        content=body.model_dump(),
        headers={**exc.headers, **NO_STORE},
    )


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """422 naming each problem by location, message and type only, and nothing the client chose
    (`validation_problems.py` says how)."""
    if not isinstance(exc, RequestValidationError):  # registered for that class only
        raise exc
    state = app_state(request)
    if state.declared_names is None:
        state.declared_names = declared_names(request.app)
    body = invalid_request_body(exc.errors(), state.declared_names)
    return Response(body, status_code=422, media_type="application/json", headers=NO_STORE)


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
