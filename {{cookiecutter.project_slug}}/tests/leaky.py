"""A deliberately leaky app, for the memory tests to catch. Never copy this into the service.

It is the service plus what much tutorial code does: decode the bearer token and keep the
decoded payload in a module-level dict keyed by subject ("a cache of the current users").
Nothing ever removes an entry, so memory grows with every new user that calls. The memory
canary in test_memory.py runs the same measurement on this app as on the real one and requires
the detector to fail here; if it ever passes, the memory test has stopped biting.

The leak is added as pure ASGI middleware, so the routes, the answers and the workload are
exactly those of the real service; only the retention differs. Call `forget_payloads()` after
each use so the leak cannot outlive the test that wanted it. `create_leaky_remote_app` is the
same idea for a remote issuer's keys: a cache keyed by every `kid` a token names,
`KeepRequestIds` for the logging path: a formatter that remembers every request id it formats,
and `keeping_tracer_provider` for traces: a span processor that keeps every span that ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from jose import jwt
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.package_name }}.auth.remote import RemoteTokenVerifier
from {{ cookiecutter.package_name }}.auth.tokens import Principal, Refused, UnknownKey
from {{ cookiecutter.package_name }}.logs import REQUEST_ID, JsonFormatter
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

# The leak: decoded payloads by subject, kept for the life of the process.
PAYLOADS: dict[str, dict[str, Any]] = {}


class RememberPayloads:
    """Decodes every bearer token it sees and keeps the payload. This is the bug."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        if settings.jwt_secret is not None and settings.jwt_algorithm.startswith("HS"):
            self.key = settings.jwt_secret.get_secret_value()
        elif settings.jwt_public_key_file is not None:
            self.key = settings.jwt_public_key_file.read_text(encoding="utf-8")
        else:
            raise ValueError("no verification key in these settings")
        self.algorithm = settings.jwt_algorithm
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.remember(Headers(scope=scope).get("authorization", ""))
        await self.app(scope, receive, send)

    def remember(self, authorization: str) -> None:
        _, _, token = authorization.partition(" ")
        try:
            payload = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
            )
        except Exception:  # any token that does not decode is simply not remembered
            return
        PAYLOADS[str(payload.get("sub"))] = payload


def create_leaky_app(settings: Settings) -> FastAPI:
    """The real app, plus the tutorial leak in front of it."""
    app = create_app(settings)
    app.add_middleware(RememberPayloads, settings=settings)
    return app


# The second leak: a JWKS client's "negative cache", one entry per unknown kid ever seen.
UNKNOWN_KIDS: dict[str, float] = {}


class RememberUnknownKids(RemoteTokenVerifier):
    """Remembers every `kid` it could not find, to skip the lookup next time. This is the bug:
    the kids are chosen by whoever sends a token, so the dict grows with what attackers send."""

    def verify(self, token: str) -> Principal | UnknownKey | Refused | None:
        result = super().verify(token)
        if isinstance(result, UnknownKey):
            UNKNOWN_KIDS[result.kid] = time.monotonic()
        return result


def create_leaky_remote_app(settings: Settings) -> FastAPI:
    """The real remote-mode app, with a kid-keyed cache in its verifier."""
    app = create_app(settings)
    state = app_state(app)
    assert state.remote_keys is not None  # a remote-mode app
    state.token_verifier = RememberUnknownKids(settings, state.remote_keys)
    return app


# The third leak: every request id ever logged ("to find recent requests quickly").
REQUEST_IDS: list[str] = []


class KeepRequestIds(JsonFormatter):
    """Formats as the service does and keeps each line it made, request id included: an
    in-memory log buffer without a bound, one line per request for the life of the process.
    (Keeping the 16-character ids alone leaked too little per round for a clear margin.)"""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if REQUEST_ID.get() is not None:
            REQUEST_IDS.append(line)
        return line


# The fourth leak: every finished span, kept in the process ("for a page of recent traces").
FINISHED_SPANS: list[ReadableSpan] = []


class KeepFinishedSpans(SpanProcessor):
    """Keeps each span as it ends, as the SDK's in-memory exporter does for tests: a span
    processor next to the batch processor, without a bound. The batch processor's queue holds
    a span until it is sent; this list holds it for the life of the process."""

    def on_end(self, span: ReadableSpan) -> None:
        FINISHED_SPANS.append(span)


def keeping_tracer_provider(*args: Any, **kwargs: Any) -> TracerProvider:
    """The SDK's tracer provider with `KeepFinishedSpans` in it; `Tracing.start` then adds its
    batch processor as usual. A test puts this in place of `opentelemetry.sdk.trace.TracerProvider`,
    the name `Tracing.start` looks up each time an app starts, so the app's code is unchanged."""
    provider = TracerProvider(*args, **kwargs)
    provider.add_span_processor(KeepFinishedSpans())
    return provider


def forget_payloads() -> None:
    PAYLOADS.clear()
    UNKNOWN_KIDS.clear()
    REQUEST_IDS.clear()
    FINISHED_SPANS.clear()
