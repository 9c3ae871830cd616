"""Prometheus metrics, served at `GET /metrics` and `HEAD /metrics` (`APP_METRICS=false` removes
the route).

Every label value comes from a fixed, small set, so the number of series stays the same
whatever the traffic: a label built from a raw path, a user name, a token, a request id or a
client address would add one series per distinct value, kept until the process exits.

- `method`: one of `METHODS`, else "other";
- `route`: the matched route's template (`/me`, never `/me?x=1` or a path with an id in it),
  else "unmatched";
- `status`: the status code as text, 100 to 599;
- `reason`, `kind`: from `AUTH_REASONS`, `SPAN_DROP_REASONS` and `REDIS_KINDS`;
- `policy`: rate-limit policy names come from the code (`limiter.check_policy_name`); past
  `MAX_POLICIES` distinct ones, the rest count as "other".

With `serve --workers N`, `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory, each
worker writes its counts there, and whichever worker answers `/metrics` adds them all up.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
OTHER = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUSES = frozenset(str(status) for status in range(100, 600))
# Where requests are refused for who they are: no token, a token that does not verify, a
# session that has ended, a missing scope, a failed login, more than one Authorization header,
# a remote issuer's token that names no session while APP_JWT_REQUIRE_SESSION asks for one,
# a client that failed to authenticate at the token endpoint (`invalid_client`).
AUTH_REASONS = (
    "missing",
    "invalid",
    "session",
    "scope",
    "login",
    "duplicate",
    "no_session",
    "client",
)
REDIS_KINDS = ("timeout", "connection", "readonly", "oom", "loading", "response", OTHER)
MAX_POLICIES = 32
# Seconds. A few fixed buckets: each one is a series per route.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("http_requests", "HTTP requests answered", ("method", "route", "status"))
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's start to its response's end",
    ("route",),
    buckets=DURATION_BUCKETS,
)
AUTH_REJECTIONS = Counter(
    "auth_rejections", "Requests refused with 400, 401 or 403, by reason", ("reason",)
)
RATE_LIMITED = Counter("rate_limited", "Requests refused with 429, by policy", ("policy",))
REDIS_ERRORS = Counter(
    "redis_errors", "Redis calls that failed (503 or a skipped check), by kind", ("kind",)
)
# Why the tracing exporter's queue gave a span up (tracing.py): it was full, or shut down.
SPAN_DROP_REASONS = ("queue_full", "already_shutdown")
SPANS_DROPPED = Counter(
    "trace_spans_dropped", "Finished spans never sent to the collector, by reason", ("reason",)
)
for _reason in AUTH_REASONS:  # exported at 0 from the start, so rates need no special case
    AUTH_REJECTIONS.labels(_reason)
for _kind in REDIS_KINDS:
    REDIS_ERRORS.labels(_kind)
for _reason in SPAN_DROP_REASONS:
    SPANS_DROPPED.labels(_reason)

# The bound children of each (method, route, status): `labels()` takes a lock and checks its
# arguments on every call, this is one dict lookup. Bounded: every key part is from a fixed set.
_request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_policies: set[str] = set()


def route_of(scope: MutableMapping[str, Any]) -> str:
    """The template of the route that handled the request, or "unmatched"; never the raw
    path. Read after the app ran: the router puts the matched route into the scope."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    key = (
        method if method in METHODS else OTHER,
        route,
        str(status) if 100 <= status <= 599 else OTHER,
    )
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (REQUESTS.labels(*key), DURATION.labels(route))
    children[0].inc()
    children[1].observe(seconds)


def auth_rejected(reason: str) -> None:
    """One request refused for who it is; `reason` is one of `AUTH_REASONS`."""
    AUTH_REJECTIONS.labels(reason).inc()


def rate_limited(policy: str) -> None:
    """One request refused with 429 under `policy`."""
    if policy not in _policies:
        if len(_policies) >= MAX_POLICIES:
            policy = OTHER
        else:
            _policies.add(policy)
    RATE_LIMITED.labels(policy).inc()


def spans_dropped(reason: str, count: int) -> None:
    """`count` spans given up by the tracing exporter's queue (`SPAN_DROP_REASONS`)."""
    SPANS_DROPPED.labels(reason if reason in SPAN_DROP_REASONS else OTHER).inc(count)


def redis_error_kind(error: BaseException) -> str:
    """A Redis failure's class, as one of `REDIS_KINDS` (never its message: it can name keys)."""
    # Subclasses before their bases: ReadOnlyError is a ResponseError, and redis' own
    # TimeoutError and ConnectionError are both RedisErrors.
    if isinstance(error, ReadOnlyError):
        return "readonly"
    if isinstance(error, OutOfMemoryError):
        return "oom"
    if isinstance(error, BusyLoadingError):
        return "loading"
    if isinstance(error, (RedisTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(error, (RedisConnectionError, OSError)):
        return "connection"
    if isinstance(error, ResponseError):
        return "response"
    return OTHER


def redis_failed(error: BaseException) -> None:
    REDIS_ERRORS.labels(redis_error_kind(error)).inc()


def exposition() -> bytes:
    """Every series in the text format. Under `serve --workers N`, the sum over the workers'
    files; the `process_*` series then describe the worker that answered (see the README)."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
        # The answering worker's own process collector, which the files do not hold.
        return text + generate_latest(_process_registry())
    return generate_latest(REGISTRY)


def _process_registry() -> CollectorRegistry:
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry


router = APIRouter()


# HEAD too, for probes that use it: the same answer without the body (uvicorn drops it).
@router.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
def metrics() -> Response:
    # A sync route: collecting reads files under --workers N, kept off the event loop.
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
