"""Traces (`APP_TRACING=otlp`, tracing.py), as a collector receives them from the real OTLP/HTTP
exporter (`otlp_collector.Collector` decodes them with opentelemetry-proto): one server span per
request named by its route, the Redis calls beneath it, the caller's trace continued, nothing
secret in any of it, and a stalled collector that costs requests nothing."""

from __future__ import annotations

import ast
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.logs import REQUEST_ID
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, running
from .helpers import PASSWORD, add_user, bearer, login, me, wait_until_ready
from .issuers import SigningKey, claims_for, new_signing_key
from .jwks_server import KeyServer
from .otlp_collector import Collector, ReceivedSpan, StalledCollector
from .redis_server import RedisServer
from .remote_issuer import Build, remote_client
from .served import serve
from .test_processes import stop
from .test_request_logs import parse

# The standard variables a developer's shell may hold, cleared so that only the test's apply.
OTEL_VARIABLES = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED",
)
SERVER_ATTRIBUTES = {
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.scheme",
    "network.protocol.version",
}
REDIS_ATTRIBUTES = {"db.system.name", "db.operation.name"}
SDK_SHUTDOWN_WAIT_SECONDS = 30  # BatchSpanProcessor.shutdown() waits this long for its thread

pytestmark = pytest.mark.anyio


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    with Collector() as collector:
        for name in OTEL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds
        yield collector


@pytest.fixture
def traced(settings: Settings) -> Settings:
    return settings.model_copy(update={"tracing": "otlp"})


def server_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in spans if span.kind == "server"]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [span for span in spans if span.parent_span_id == parent.span_id]


async def test_login_me_and_refresh_each_make_one_server_span_with_their_redis_calls_under_it(
    traced: Settings, collector: Collector
) -> None:
    add_user(traced, "alice")
    async with running(create_app(traced)) as client:
        pair = await login(client, "alice")
        assert (await me(client, pair["access_token"])).status_code == 200
        refresh = {"refresh_token": pair["refresh_token"]}
        assert (await client.post("/auth/refresh", json=refresh)).status_code == 200
    spans = collector.spans()  # the app has stopped: its last spans were sent

    servers = server_spans(spans)
    assert sorted(span.name for span in servers) == [
        "GET /me",
        "POST /auth/refresh",
        "POST /auth/token",
    ]
    beneath = {server.name: sorted(s.name for s in children(spans, server)) for server in servers}
    assert beneath == {
        "POST /auth/token": ["limit.refund", "limit.take", "session.create"],
        "GET /me": ["session.admit"],
        "POST /auth/refresh": ["session.refresh"],
    }
    for server in servers:
        assert server.parent_span_id == ""  # no traceparent came: each request is a new trace
        assert set(server.attributes) == SERVER_ATTRIBUTES, server
        assert server.attributes["http.route"] == server.name.partition(" ")[2]
        assert server.attributes["http.response.status_code"] == 200
        assert server.status == "unset"
        for child in children(spans, server):
            assert child.kind == "client"
            assert child.trace_id == server.trace_id
            assert set(child.attributes) == REDIS_ATTRIBUTES, child
            assert child.attributes["db.system.name"] == "redis"
    assert len(spans) == len(servers) + sum(len(children(spans, s)) for s in servers)
    assert {span.resource["service.name"] for span in spans} == {"{{ cookiecutter.project_slug }}"}


async def test_a_callers_traceparent_is_continued_and_an_unsampled_one_is_not_recorded(
    traced: Settings, collector: Collector
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    unsampled_trace = secrets.token_hex(16)
    async with running(create_app(traced)) as client:
        sampled = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        assert (await client.get("/health/live", headers=sampled)).status_code == 200
        unsampled = {"traceparent": f"00-{unsampled_trace}-{parent_id}-00"}
        assert (await client.get("/health/live", headers=unsampled)).status_code == 200
        broken = {"traceparent": f"00-{'0' * 32}-{parent_id}-01"}  # an invalid trace id
        assert (await client.get("/health/live", headers=broken)).status_code == 200
    servers = server_spans(collector.spans())
    assert len(servers) == 2, servers
    continued = [span for span in servers if span.trace_id == trace_id]
    assert [span.parent_span_id for span in continued] == [parent_id]
    (fresh,) = [span for span in servers if span.trace_id != trace_id]
    assert fresh.parent_span_id == ""  # the invalid one started a trace of its own
    assert unsampled_trace not in {span.trace_id for span in collector.spans()}


async def test_no_token_password_hash_query_or_body_reaches_the_collector(
    traced: Settings, collector: Collector
) -> None:
    """The same search as the log tests', through every byte the collector received."""
    add_user(traced, "alice")
    async with running(create_app(traced)) as client:
        pair = await login(client, "alice")
        token = pair["access_token"]
        in_query = await client.get(f"/me?access_token={token}&q=needle-in-query")
        assert in_query.status_code == 401
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        wrong = await client.post("/auth/token", data={"username": "alice", "password": "Wr0ng!"})
        assert wrong.status_code == 401
        refresh = {"refresh_token": pair["refresh_token"]}
        refreshed = await client.post("/auth/refresh", json=refresh)
        assert refreshed.status_code == 200
        nowhere = await client.get("/nowhere/needle-in-path")
        assert nowhere.status_code == 404
    received = collector.raw()
    assert received  # something was sent, so the search below searched something
    stored_hash = json.loads(traced.users_file.read_text())["users"]["alice"]["password_hash"]
    assert traced.jwt_secret is not None
    found = [
        text
        for text in (
            PASSWORD,
            "Wr0ng!",
            stored_hash,
            stored_hash.rpartition("$")[2],
            traced.jwt_secret.get_secret_value(),
            *(pair["access_token"], pair["refresh_token"], refreshed.json()["refresh_token"]),
            *pair["access_token"].split(".")[1:],
            pair["refresh_token"].rpartition(".")[2],
            "access_token",
            "needle-in-query",
            "needle-in-path",
            "alice",  # no identity without APP_TRACING_INCLUDE_SUBJECT
        )
        if text.encode() in received
    ]
    assert found == []
    names = Counter(span.name for span in server_spans(collector.spans()))
    assert names["GET unmatched"] == 1, names


async def test_the_subject_is_named_only_when_the_settings_allow_it(
    traced: Settings, collector: Collector
) -> None:
    named = traced.model_copy(update={"tracing_include_subject": True})
    add_user(named, "alice")
    async with running(create_app(named)) as client:
        pair = await login(client, "alice")
        assert (await me(client, pair["access_token"])).status_code == 200
    (span,) = [span for span in server_spans(collector.spans()) if span.name == "GET /me"]
    assert span.attributes["enduser.id"] == "alice"


async def test_a_remote_issuers_token_and_the_key_fetch_it_causes_are_traced(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    algorithm: str,
    collector: Collector,
) -> None:
    """Remote mode: the first key fetch is a trace of its own; a token signed with a key the
    issuer published since makes the request fetch again, and that fetch is a client span of
    the request's, whose `traceparent` the issuer received."""
    key_server.start()
    settings = remote_settings(tracing="otlp", jwt_require_session=False)
    new_key = new_signing_key(algorithm)
    async with remote_client(settings) as (_, client):
        await wait_until_ready(client)
        key_server.serve(issuer_key.jwk(), new_key.jwk())  # published after our first fetch
        token = new_key.sign(claims_for(settings, "someone"))
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
    spans = collector.spans()
    (first_fetch, second_fetch) = [span for span in spans if span.name == "jwks.fetch"]
    assert first_fetch.parent_span_id == ""
    servers = server_spans(spans)
    assert [span.name for span in servers] == ["GET /health/ready", "GET /me"], servers
    server = servers[1]
    assert sorted(span.name for span in children(spans, server)) == ["jwks.fetch", "limit.take"]
    assert second_fetch.parent_span_id == server.span_id
    for fetch in (first_fetch, second_fetch):
        assert fetch.kind == "client"
        assert fetch.attributes == {"http.request.method": "GET", "http.response.status_code": 200}
    # version-trace id-parent id-flags (sampled, and W3C level 2's "random" bit: 01 or 03)
    received = [value.split("-") for value in key_server.traceparents]
    assert [(version, trace_id, parent) for version, trace_id, parent, _ in received] == [
        ("00", fetch.trace_id, fetch.span_id) for fetch in (first_fetch, second_fetch)
    ]
    assert all(int(flags, 16) & 1 for *_, flags in received)


def test_json_log_lines_of_a_traced_request_carry_its_trace_and_span_ids(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, collector: Collector
) -> None:
    """A served process: the request line (and every line of the request) names the ids of the
    span the collector received, beside the request id; an untraced line names none."""
    environment = {
        "APP_TRACING": "otlp",
        "APP_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    with serve(redis_url, key_files, tmp_path, environment=environment) as served:
        request_id = "traced-request"
        url = served.service.url + "/health/live"
        answer = httpx.get(url, headers={"X-Request-ID": request_id}, timeout=10)
        assert answer.status_code == 200
        output = stop(served.service, served.log)
    (line,) = [line for line in parse(output) if line.get("request_id") == request_id]
    (span,) = [span for span in server_spans(collector.spans()) if span.name == "GET /health/live"]
    assert (line["trace_id"], line["span_id"]) == (span.trace_id, span.span_id)
    startup = [line for line in parse(output) if "request_id" not in line]
    assert startup  # uvicorn's own lines at start and stop
    assert not [line for line in startup if "trace_id" in line or "span_id" in line]


async def test_a_redis_outage_makes_error_spans_named_by_class_only(
    collector: Collector, redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Redis gone: /me answers 503; its span is an error with the status as `error.type`, and
    the Redis call's span an error with the exception's class (its text could name a key)."""
    settings = make_settings(
        redis_server.url,
        key_files,
        users_file=tmp_path / "users.json",
        tracing="otlp",
        redis_timeout_seconds=0.5,
    )
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        pair = await login(client, "alice")
        redis_server.stop()
        assert (await me(client, pair["access_token"])).status_code == 503
    spans = collector.spans()
    (server,) = [span for span in server_spans(spans) if span.name == "GET /me"]
    assert server.status == "error"
    assert server.attributes["error.type"] == "503"
    (call,) = children(spans, server)
    assert call.name == "session.admit"
    assert call.status == "error"
    assert call.attributes["error.type"].isidentifier(), call.attributes  # a class name
    assert set(call.attributes) == REDIS_ATTRIBUTES | {"error.type"}


async def test_a_request_whose_count_raises_still_ends_its_span_and_restores_the_context(
    traced: Settings, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the app has answered, the middleware counts the request and writes its line; if
    either raises (a log handler that fails, say), the span still ends and the request id and
    the span are no longer current. The in-process client runs the app in this test's own task,
    so what the middleware leaves set here, it would leave set in a server's task."""

    def failing(method: str, route: str, status: int, seconds: float) -> None:
        raise RuntimeError("the request count failed")

    monkeypatch.setattr(metrics, "observe_request", failing)
    async with running(create_app(traced)) as client:
        with pytest.raises(RuntimeError, match="the request count failed"):
            await client.get("/health/live")
        assert REQUEST_ID.get() is None
        assert not trace.get_current_span().get_span_context().is_valid
    (span,) = server_spans(collector.spans())  # ended, so exported
    assert span.name == "GET /health/live"


async def test_a_stalled_collector_costs_requests_nothing_and_its_dropped_spans_are_counted(
    traced: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's first batch waits on a collector that never answers; the queue fills,
    every span past it is dropped and counted, each request is answered, and stopping the app
    takes `SHUTDOWN_SECONDS`, not the exporter's timeout nor the SDK's own 30 s wait for it (a
    bound far above the one the app keeps: this is no timing test)."""
    queue = 16
    with StalledCollector() as stalled:
        for name in OTEL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stalled.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60")  # seconds: stalled for the test
        monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(queue))
        monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
        dropped_before = dropped()
        app = create_app(traced)
        requests = 200
        async with running(app) as client:
            statuses = Counter(
                [(await client.get("/health/live")).status_code for _ in range(requests)]
            )
            stopping = time.monotonic()
        stopped_after = time.monotonic() - stopping
        assert statuses == {200: requests}
        assert stopped_after < SDK_SHUTDOWN_WAIT_SECONDS - 5, stopped_after
        # At most the queue and one batch in the exporter's hands were kept.
        assert dropped() - dropped_before >= requests - queue - 4


def dropped() -> float:
    value = REGISTRY.get_sample_value("trace_spans_dropped_total", {"reason": "queue_full"})
    return value or 0.0


# A process that makes an app with APP_TRACING=off, serves three requests through it, and prints
# the statuses; the test puts its own lines before (`{setup}`) and after (`{check}`) it.
OFF_SCRIPT = """
import asyncio, sys
{setup}
from tests.conftest import make_settings, running
from {{ cookiecutter.package_name }}.main import create_app

settings = make_settings({redis_url!r}, {key_files!r}, users_file={users_file!r})

async def serve_three():
    async with running(create_app(settings)) as client:
        paths = ("/health/live", "/me?access_token=x", "/nowhere")
        return [(await client.get(path)).status_code for path in paths]

print(asyncio.run(serve_three()))
{check}
"""
# Makes the `otel` extra's packages unimportable, as in an install without the extra.
WITHOUT_THE_EXTRA = """
import importlib.abc
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""
# With the SDK installed: what was loaded, then a global SDK tracer provider (as an agent would
# set) and the same requests again, then the spans that provider got.
LOADED_AND_GLOBAL_SPANS = """
print(sorted(name for name in sys.modules if name.startswith(
    ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation"))))
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
print(asyncio.run(serve_three()))
print([span.name for span in exporter.get_finished_spans()])
"""
# Without the extra: tracing asked for is refused in one line that names the setting.
REFUSED_WITHOUT_THE_EXTRA = """
try:
    make_settings({redis_url!r}, {key_files!r}, tracing="otlp")
except ValueError as error:
    print([line for line in str(error).splitlines() if "APP_TRACING" in line])
"""


def run_off_script(
    settings: Settings, key_files: dict[str, Path], setup: str, check: str
) -> list[str]:
    values = {
        "redis_url": settings.redis_url,
        "key_files": {name: str(path) for name, path in key_files.items()},
        "users_file": str(settings.users_file),
    }
    script = OFF_SCRIPT.format(setup=setup, check=check.format(**values), **values)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


SERVED = "[200, 401, 404]"


def test_without_the_otel_extra_the_service_runs_and_tracing_is_refused_in_one_line(
    settings: Settings, key_files: dict[str, Path]
) -> None:
    statuses, refusal = run_off_script(
        settings, key_files, WITHOUT_THE_EXTRA, REFUSED_WITHOUT_THE_EXTRA
    )[-2:]
    assert statuses == SERVED
    (line,) = ast.literal_eval(refusal)
    assert "APP_TRACING=otlp needs the OpenTelemetry SDK" in line
    assert "otel" in line


def test_tracing_off_loads_no_tracing_sdk_and_fastapi_makes_no_span_of_its_own(
    settings: Settings, key_files: dict[str, Path]
) -> None:
    """In a process of its own (a tracer provider is global). Off, the app loads nothing of the
    SDK's tracing, no exporter and no instrumentation (redis-py itself loads the SDK's metrics
    part when the SDK is installed: the test above runs without it); and when something sets a
    global SDK tracer provider, as an auto-instrumentation agent would, FastAPI, whose own
    telemetry would start a span per request, records nothing."""
    lines = run_off_script(settings, key_files, "", LOADED_AND_GLOBAL_SPANS)
    first, loaded, second, spans = lines[-4:]
    assert (first, second) == (SERVED, SERVED)
    assert loaded == "[]"
    assert spans == "[]"
