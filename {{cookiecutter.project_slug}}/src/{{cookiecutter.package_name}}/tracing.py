"""Traces (`APP_TRACING=otlp`): OpenTelemetry spans for each request, each Redis call on its
way and each fetch of a remote issuer's keys, sent to a collector over OTLP/HTTP.

Off (the default), `tracing_for` gives None: the middleware, the stores and the key fetcher
then take their untraced paths, and the OpenTelemetry SDK and exporter are never imported
(the `otel` extra need not even be installed). FastAPI's own telemetry is switched off in
either case (`FASTAPI_TELEMETRY`): it records the query string (`url.query`, where careless
clients put `access_token=`), the raw `Host` header and a span per dependency, and would start
a second server span per request as soon as anything set a global tracer provider.

What a span may hold, and why it stays small:

- server spans are named `<METHOD> <route template>`, `unmatched` when no route matched, never
  the raw path; their attributes are the method, the route, the scheme, the HTTP version and
  the status, each from a fixed set (`server_attributes`);
- Redis spans are named by what the call does (`session.admit`, `limit.take`, ...: fixed names,
  see `scripts.SPAN_NAMES`), with the database system and the command, and no key or argument;
- a key fetch span carries the method and the status, not the URL (it can hold credentials);
- no token, password, hash, query string or body, ever; the subject (`enduser.id`) only with
  `APP_TRACING_INCLUDE_SUBJECT=true`.

The standard variables configure the rest: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
`OTEL_SERVICE_NAME` (default: this project's name), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default: every request, or as its caller's
`traceparent` says), `OTEL_BSP_MAX_QUEUE_SIZE` and the other `OTEL_BSP_*` of the batch processor.

Memory: finished spans wait in the batch processor's queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 by
default) for the exporter's thread. When the collector is slow, stalled or gone, the queue fills
and every further span is dropped and counted (`trace_spans_dropped_total`): a request never
waits for the collector, and nothing grows. Stopping waits at most `SHUTDOWN_SECONDS` for the
last spans to go.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Counter, Meter, NoOpCounter, NoOpMeter, NoOpMeterProvider
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from . import metrics
from .logs import PACKAGE, TRACE_IDS

if TYPE_CHECKING:
    from .settings import Settings

# A registered Redis script (`scripts.RunScript`): `await run(keys=[...], args=[...])`.
RunScript = Callable[..., Awaitable[Any]]

TracingMode = Literal["off", "otlp"]
# `service.name` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES gives one.
SERVICE_NAME = "{{ cookiecutter.project_slug }}"

# `FastAPI(telemetry=...)`: none of FastAPI's own spans, metrics or log events; this module
# makes the one server span per request.
FASTAPI_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,  # FASTAPI_OTEL_AUTO_CONFIGURE=true would add exporters of its own
}

# W3C trace context only (`traceparent`, `tracestate`): no baggage, whose entries a client
# chooses and which would travel on to every service we call.
PROPAGATOR = TraceContextTextMapPropagator()
CONTEXT_HEADERS = frozenset({b"traceparent", b"tracestate"})
# The longest value any attribute may have (the SDK cuts longer ones): the subject from a
# remote issuer's token is the only value not from a fixed set.
MAX_ATTRIBUTE_LENGTH = 128
# How long stopping waits for the last spans to reach the collector; the rest are lost.
SHUTDOWN_SECONDS = 2.0
SCHEMES = frozenset({"http", "https"})
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})
OTHER_METHOD = "_OTHER"  # the semantic conventions' word for a method outside the known set
REDIS_ATTRIBUTES = {"db.system.name": "redis"}
# What the batch processor reports through its meter: spans given up, with `error.type`.
PROCESSED_INSTRUMENT = "otel.sdk.processor.span.processed"
INTERNAL_METRICS_VARIABLE = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"


class Tracing:
    """The app's tracer: made when the app starts (`start`), stopped when it stops (`close`).

    One per app, held by the middleware and the stores; it keeps no span and nothing per
    request. Each span lives as long as its request or call, then waits in the exporter's
    bounded queue (see the module's docstring).
    """

    def __init__(self, include_subject: bool = False) -> None:
        self.include_subject = include_subject
        self._tracer: Tracer | None = None
        self._stop: Callable[[], None] | None = None

    def start(self) -> None:
        """Build the SDK's tracer provider, its batch processor and the OTLP/HTTP exporter."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        # The sampler comes from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
        provider = TracerProvider(
            resource=resource, span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_LENGTH)
        )
        self._tracer = provider.get_tracer(PACKAGE)
        with internal_metrics():
            processor = BatchSpanProcessor(OTLPSpanExporter(), meter_provider=DropCounting())
        provider.add_span_processor(processor)
        self._stop = provider.shutdown

    async def close(self) -> None:
        """Send what is queued, waiting at most `SHUTDOWN_SECONDS` (a stalled collector would
        hold the SDK's own shutdown for half a minute)."""
        stop, self._stop, self._tracer = self._stop, None, None
        if stop is None:
            return
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()

        def run() -> None:
            try:
                stop()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop has closed: no one waits
                    loop.call_soon_threadsafe(stopped.set)

        # A daemon thread: one stuck on the collector does not keep the process alive.
        threading.Thread(target=run, name="tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), SHUTDOWN_SECONDS)

    # -- requests ---------------------------------------------------------------------------

    def start_request(self, scope: MutableMapping[str, Any]) -> RequestSpan | None:
        """The server span of an HTTP request, made current for what runs inside it. It
        continues the caller's trace when the request carries a valid `traceparent`."""
        tracer = self._tracer
        if tracer is None:
            return None
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in CONTEXT_HEADERS
        }
        parent = PROPAGATOR.extract(carrier) if carrier else None
        method = scope["method"]
        method = method if method in metrics.METHODS else OTHER_METHOD
        span = tracer.start_span(
            "HTTP" if method == OTHER_METHOD else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=server_attributes(scope, method),
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        ids = None
        span_context = span.get_span_context()
        if span_context.trace_flags.sampled:
            ids = TRACE_IDS.set((span_context.trace_id, span_context.span_id))
        return RequestSpan(span, token, ids)

    def identify(self, subject: str) -> None:
        """Name the authenticated subject on the request's span, if the settings allow it."""
        if self.include_subject:
            trace.get_current_span().set_attribute("enduser.id", subject)

    # -- Redis calls and key fetches ----------------------------------------------------------

    def _child_tracer(self) -> Tracer | None:
        """The tracer for a span under the current one, or None when there is no point making
        one: tracing has not started, or the current span belongs to a trace this process does
        not record. The SDK's samplers decide a child as its parent was decided (parent-based
        ones by the parent's flag, ratio ones by the trace id they share), so that child would
        record nothing either; at a 1 % sample rate, skipping it saves the other 99 % of
        requests the cost of making it."""
        tracer = self._tracer
        if tracer is None:
            return None
        current = trace.get_current_span()
        if current.get_span_context().is_valid and not current.is_recording():
            return None
        return tracer

    @asynccontextmanager
    async def client_span(self, name: str, attributes: Attributes = None) -> AsyncIterator[Span]:
        """A client span around one call (a key fetch, a Redis command) from the current span;
        a span that records nothing when `_child_tracer` says there is no point."""
        tracer = self._child_tracer()
        if tracer is None:
            yield trace.INVALID_SPAN
            return
        with tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,  # an exception's text can name a key or a URL
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as error:
                failed(span, error)
                raise

    def redis_script(self, run: RunScript, name: str) -> RunScript:
        """`run` (a registered script) with a client span named `name` around each call."""
        attributes = {**REDIS_ATTRIBUTES, "db.operation.name": "EVALSHA"}

        async def traced(keys: Sequence[str], args: Sequence[str | int]) -> Any:
            tracer = self._child_tracer()
            if tracer is None:
                return await run(keys=keys, args=args)
            with tracer.start_as_current_span(
                name,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await run(keys=keys, args=args)
                except BaseException as error:
                    failed(span, error)
                    raise

        return traced

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Add the current span's `traceparent` (and `tracestate`) to an outgoing request."""
        PROPAGATOR.inject(headers)


class RequestSpan:
    """One request's server span and the context tokens to undo when it ends."""

    __slots__ = ("_ids", "_span", "_token")

    def __init__(self, span: Span, token: object, ids: object) -> None:
        self._span = span
        self._token = token
        self._ids = ids

    def end(self, method: str, route: str, status: int) -> None:
        """Name the span by its route, set its status (5xx is an error: semantic conventions
        for server spans) and end it, then restore the context as it was before the request."""
        span = self._span
        if span.is_recording():  # else nothing of it is kept: skip the naming
            method = method if method in metrics.METHODS else OTHER_METHOD
            span.update_name(f"{'HTTP' if method == OTHER_METHOD else method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(StatusCode.ERROR)
        span.end()
        if self._ids is not None:
            TRACE_IDS.reset(self._ids)  # type: ignore[arg-type]
        otel_context.detach(self._token)  # type: ignore[arg-type]


def server_attributes(scope: MutableMapping[str, Any], method: str) -> dict[str, str]:
    """The server span's attributes at its start; each value is from a fixed set."""
    attributes = {"http.request.method": method}
    scheme = scope.get("scheme")
    if scheme in SCHEMES:
        attributes["url.scheme"] = scheme
    version = scope.get("http_version")
    if version in HTTP_VERSIONS:
        attributes["network.protocol.version"] = version
    return attributes


def tracing_for(settings: Settings) -> Tracing | None:
    """The app's `Tracing`, or None with `APP_TRACING=off`."""
    if settings.tracing == "off":
        return None
    return Tracing(settings.tracing_include_subject)


@contextmanager
def internal_metrics() -> Iterator[None]:
    """The SDK's internal metrics on while the batch processor is made: it reports the spans it
    drops only then (it reads `OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED` once, when made), and
    its reports go to `DropCounting`. Only then: a tracer made with them on would also count
    every span it starts, a few microseconds per span for numbers nobody reads."""
    before = os.environ.get(INTERNAL_METRICS_VARIABLE)
    os.environ[INTERNAL_METRICS_VARIABLE] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[INTERNAL_METRICS_VARIABLE]
        else:
            os.environ[INTERNAL_METRICS_VARIABLE] = before


def failed(span: Span, error: BaseException) -> None:
    """Mark a client span as failed by the error's class (never its text: it can name a key)."""
    if isinstance(error, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")
        return
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(StatusCode.ERROR)


# -- counting dropped spans ---------------------------------------------------------------------
# The batch processor counts what it drops on an OpenTelemetry meter: this one forwards those
# counts, and only those, to `metrics.spans_dropped` (Prometheus), and measures nothing else.


class DropCounting(NoOpMeterProvider):
    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> Meter:
        return _DropMeter(name, version, schema_url)


class _DropMeter(NoOpMeter):
    def create_counter(self, name: str, unit: str = "", description: str = "") -> Counter:
        if name == PROCESSED_INSTRUMENT:
            return _DroppedSpans(name, unit, description)
        return super().create_counter(name, unit, description)


class _DroppedSpans(NoOpCounter):
    def add(
        self,
        amount: int | float,
        attributes: Attributes = None,
        context: otel_context.Context | None = None,
    ) -> None:
        reason = attributes.get("error.type") if attributes else None
        if reason is not None:  # without one, the spans were handed to the exporter
            metrics.spans_dropped(str(reason), int(amount))
