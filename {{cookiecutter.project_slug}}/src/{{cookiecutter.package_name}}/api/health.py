"""Liveness and readiness probes.

Each answers HEAD like GET, without the body (load balancers probe with HEAD). HEAD is not in the
OpenAPI document: RFC 9110 defines it as GET without the body, and an operation of its own would
promise a JSON body that never comes.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from .. import errors
from ..redis_clients import is_ready
from ..state import app_state

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
@router.head("/live", include_in_schema=False)
async def live() -> Response:
    """The process is up. Never touches Redis, so a Redis outage does not restart the app."""
    return JSONResponse({"status": "ok"})


@router.get("/ready", responses=errors.responses(503))
@router.head("/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    """Ready to serve: not draining for a shutdown (SIGTERM), Redis answers PING within the
    configured timeout, and (verifying a remote issuer's tokens) its keys have been fetched."""
    state = app_state(request)
    if state.drain.started:  # still serving, but a balancer should send its requests elsewhere
        return errors.service_unavailable()
    if state.remote_keys is not None and not state.remote_keys.ready:
        return errors.service_unavailable()
    if await is_ready(state.stores.redis, state.settings.redis_timeout_seconds):
        return JSONResponse({"status": "ok"})
    return errors.service_unavailable()
