"""Memory stays bounded under repeated auth, in this process and in Redis.

The process side drives the real app (in-process ASGI, real Redis) through six rounds of about
350 requests (some 1,300 distinct tokens in all): valid tokens, validly signed ones whose
session is gone, forged ones and malformed ones, with logins, refreshes and logouts over HTTP,
the client credentials grant (both methods, a wrong secret, a client id never seen before, a
scope too wide) and requests for unknown paths; every request is logged as JSON and counted in
the metrics.
It requires traced memory to stay flat from round to round (see `memory.py`); rounds are kept
small because tracing makes every allocation several times slower. Canaries run the same
workload and the same rule with one leak each and require the rule to fail there: the tutorial
leak (`leaky.py`), a log formatter that keeps what it formats, and a metrics label taken from
the raw path. The same pair runs for a remote issuer's keys (unknown kids and bad signatures
by the hundred a round) with a canary that caches every kid it is asked about.

The traced workload is the same auth workload with `APP_TRACING=otlp`: a server span per request
and a client span per Redis call, sent by the real OTLP/HTTP exporter. Once to a collector that
accepts (`otlp_collector.Collector`; each round ends with every span sent), once to one that never
answers (`StalledCollector`), where the batch processor's queue fills in the first round and every
span after that is dropped; the rule is the same, and so is its canary: a span processor that
keeps every span that ends.

The Redis side requires a TTL on every key, no key written by a rejected request, and a per-user
session index that stays at its cap however often the user logs in.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from opentelemetry.sdk.trace import TracerProvider
from redis import Redis

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.logs import PACKAGE, JsonFormatter
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import delete_keys, keyspace, make_settings, running
from .helpers import add_client, add_user, bearer, client_token, login
from .issuers import (
    SigningKey,
    bad_signature_tokens,
    claims_for,
    new_signing_key,
    random_kid_tokens,
)
from .jwks_server import KeyServer
from .leaky import (
    FINISHED_SPANS,
    PAYLOADS,
    REQUEST_IDS,
    UNKNOWN_KIDS,
    KeepRequestIds,
    create_leaky_app,
    create_leaky_remote_app,
    forget_payloads,
    keeping_tracer_provider,
)
from .memory import Rounds, Workload, assert_bounded, measure
from .otlp_collector import Collector, StalledCollector
from .test_tracing import dropped

pytestmark = pytest.mark.anyio

SUBJECTS_PER_ROUND = 50  # 5 or 6 requests each, plus 11 per login user and 16 for a client
UNKNOWN_PATHS_PER_ROUND = 20  # 404s, each for a path never seen before
UNKNOWN_CLIENTS_PER_ROUND = 10  # client credentials for client ids never seen before
LOGIN_USERS = ("mem-login-0", "mem-login-1", "mem-login-2")
SCOPES = frozenset({"read"})
# How far traced memory may grow over the measured rounds (without their largest step, see
# memory.py), however many requests run. On the real app (HS256, RS256 and ES256 bakes) the
# growth measured between -200 and +200 B; the leaky variant grows about 59 KiB a round
# (some 1.2 KiB per user), about 118 KiB in the two counted rounds. Traced (HS256), it measured
# -16 B to 2.8 KiB with every span sent and -12 B to 3.0 KiB with a stalled collector (mostly
# under 0.5 KiB; the larger ones had a second one-time step of about 4 KiB, the size of one
# request's two spans); the canary that keeps every finished span grows about 1.9 MiB a round
# (some 690 spans of 2.8 KiB).
GROWTH_BOUND_BYTES = 8 * 1024
MAX_SESSIONS = 5
REJECTED_REQUESTS = 1000  # per batch in the Redis write test
UNREACHED_RATE = "999999999/second"
# A limit the tests stay under whose buckets outlive the test (3.6 s per request taken), so a
# bucket written where none should be is still there to be seen.
LASTING_RATE = "1000/hour"


@pytest.fixture
def settings_for(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> Iterator[Callable[..., Settings]]:
    """Test settings with a few users who log in; limits the workload never reaches unless
    overridden. Keys written under each settings' prefix are removed afterwards."""
    made: list[Settings] = []

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "users_file": tmp_path / "users.json",
            "rate_limit": UNREACHED_RATE,
            "login_rate_limit": UNREACHED_RATE,
            "max_sessions_per_user": MAX_SESSIONS,
            **overrides,
        }
        made.append(make_settings(redis_url, key_files, **values))
        for user in LOGIN_USERS:
            add_user(made[-1], user, scopes=SCOPES)
        return made[-1]

    yield build
    for settings in made:
        delete_keys(redis_url, settings.redis_key_prefix)


@pytest.fixture
def memory_settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for()


@pytest.fixture(autouse=True)
def no_leftover_leak() -> Iterator[None]:
    """The leaky apps' dicts are emptied around every test, so their leaks stay in the canaries."""
    forget_payloads()
    yield
    forget_payloads()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(token: str, style: int) -> str:
    """A token the service did not sign, for another subject: tampered claims, `alg: none`,
    or a signature made with someone else's key (for RS256/ES256 also an algorithm swap)."""
    claims: dict[str, Any] = jwt.get_unverified_claims(token)
    claims["sub"] = "forged-" + claims["sub"]
    header, _, signature = token.split(".")
    if style % 3 == 0:
        return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    if style % 3 == 1:
        none_header = b64(b'{"alg":"none","typ":"at+jwt"}')
        return f"{none_header}.{b64(json.dumps(claims).encode())}."
    return jwt.encode(
        claims, secrets.token_urlsafe(32), algorithm="HS256", headers={"typ": "at+jwt"}
    )


def malformed(token: str, style: int) -> str:
    """Something that is not a JWT at all, different every time."""
    noise = secrets.token_urlsafe(24)
    if style % 4 == 0:
        return noise
    if style % 4 == 1:
        return f"{noise}.{secrets.token_urlsafe(24)}.{secrets.token_urlsafe(24)}"
    header = token.partition(".")[0]
    if style % 4 == 2:
        return f"{header}.{b64(b'not json ' + noise.encode())}.{noise}"
    return token[: len(token) // 2] + noise


UNKNOWN_PATH_PREFIX = "/no-such-route/"


class AuthWorkload:
    """One round of auth traffic against a running app; it keeps nothing between rounds.

    Each round uses fresh subjects (`mem-<round>-<i>`), so anything kept per subject grows.
    Requests for fresh unknown paths go through the request line and the metrics like any other.
    Sessions and tokens for them are made directly (`sessions.create`, `token_issuer.issue`):
    a password check per subject would only slow the test down. Login, refresh and logout go
    through HTTP for a few real users, and one service account gets tokens by the client
    credentials grant. Every answer's status is checked, so a workload that stopped reaching
    the code it is meant to exercise fails loudly.
    """

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client
        # Made here, before any round: a name of its own, as a test may make two workloads.
        self.service_account = f"mem-client-{secrets.token_hex(4)}"
        self.secret = add_client(app_state(app).settings, self.service_account, scopes=SCOPES)

    async def __call__(self, number: int) -> int:
        requests = 0
        for index in range(SUBJECTS_PER_ROUND):
            requests += await self.subject(f"mem-{number}-{index}", index)
        for user in LOGIN_USERS:
            requests += await self.http_flows(user)
        requests += await self.client_flows()
        for _ in range(UNKNOWN_PATHS_PER_ROUND):
            response = await self.client.get(f"{UNKNOWN_PATH_PREFIX}{secrets.token_hex(8)}")
            assert response.status_code == 404, response.text
        return requests + UNKNOWN_PATHS_PER_ROUND

    async def get_me(self, token: str, status: int) -> None:
        response = await self.client.get("/me", headers=bearer(token))
        assert response.status_code == status, response.text

    async def subject(self, sub: str, index: int) -> int:
        """Five requests (six with an HTTP logout): valid, signed for a session that never
        existed, forged, malformed, and valid again after its session ended."""
        state = app_state(self.app)
        session = await state.stores.sessions.create(sub, SCOPES)
        valid: str = state.issuer().token_issuer.issue(sub, session.sid, SCOPES).token
        ghost: str = state.issuer().token_issuer.issue(sub, secrets.token_urlsafe(16), SCOPES).token
        await self.get_me(valid, 200)
        await self.get_me(ghost, 401)
        await self.get_me(forged(valid, index), 401)
        await self.get_me(malformed(valid, index), 401)
        if index % 2 == 0:
            response = await self.client.post("/auth/logout", headers=bearer(valid))
            assert response.status_code == 204, response.text
        else:
            await state.stores.sessions.revoke(sub, session.sid)
        await self.get_me(valid, 401)
        return 6 if index % 2 == 0 else 5

    async def http_flows(self, user: str) -> int:
        """Eleven requests: login, refresh, refresh-token reuse, logout, and one kept session."""
        first = await login(self.client, user)
        await self.get_me(first["access_token"], 200)
        second = await self.refresh(first["refresh_token"], 200)
        await self.refresh(first["refresh_token"], 401)  # reuse: ends the session
        await self.get_me(second["access_token"], 401)
        third = await login(self.client, user)
        response = await self.client.post("/auth/logout", headers=bearer(third["access_token"]))
        assert response.status_code == 204, response.text
        await self.refresh(third["refresh_token"], 401)
        await self.refresh(malformed(third["refresh_token"], 0), 401)
        kept = await login(self.client, user)  # stays alive; the per-user cap bounds these
        await self.get_me(kept["access_token"], 200)
        return 11

    async def client_flows(self) -> int:
        """A token by each client authentication method, each used once, a wrong secret, a
        scope the client does not hold, and client ids never seen before (their text is the
        caller's, so nothing may be kept by it). Each token's session lives as long as the
        token; the per-client cap (`APP_MAX_TOKENS_PER_CLIENT`) bounds them in Redis."""
        name = self.service_account
        by_post = await client_token(self.client, name, self.secret)
        await self.get_me(by_post["access_token"], 200)
        form = {"grant_type": "client_credentials", "scope": "read"}
        by_basic = await self.client.post("/auth/token", data=form, auth=(name, self.secret))
        assert by_basic.status_code == 200, by_basic.text
        await self.get_me(by_basic.json()["access_token"], 200)
        too_wide = {**form, "scope": "read admin"}
        refused = await self.client.post("/auth/token", data=too_wide, auth=(name, self.secret))
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_scope"
        for number in range(1 + UNKNOWN_CLIENTS_PER_ROUND):  # a wrong secret, then strangers
            client_id = name if number == 0 else f"mem-nobody-{secrets.token_hex(4)}"
            secret = self.secret[::-1] if number == 0 else self.secret
            refused = await self.client.post("/auth/token", data=form, auth=(client_id, secret))
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "invalid_client"
        return 6 + UNKNOWN_CLIENTS_PER_ROUND

    async def refresh(self, refresh_token: str, status: int) -> dict[str, Any]:
        response = await self.client.post("/auth/refresh", json={"refresh_token": refresh_token})
        assert response.status_code == status, response.text
        pair: dict[str, Any] = response.json()
        return pair


async def measure_app(app: FastAPI) -> Rounds:
    async with running(app) as client:
        return await measure(AuthWorkload(app, client), not_counted=[__file__])


@contextmanager
def json_logs(formatter: logging.Formatter) -> Iterator[None]:
    """The service's lines (requests, audit) formatted as `serve` would and written to the
    null device: the whole logging path runs, and nothing the test keeps grows. Not passed on
    to the root logger, where pytest keeps every record it sees."""
    logger = logging.getLogger(PACKAGE)
    level, propagate = logger.level, logger.propagate
    with open(os.devnull, "w") as null:
        handler = logging.StreamHandler(null)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


async def test_process_memory_stays_flat_under_repeated_auth(memory_settings: Settings) -> None:
    """Hundreds of distinct tokens of every kind a round, round after round, each request
    logged as JSON with its own request id and counted in the metrics: no growth."""
    with json_logs(JsonFormatter()):
        rounds = await measure_app(create_app(memory_settings))
    print(rounds.describe())
    assert_bounded(rounds, GROWTH_BOUND_BYTES)


async def test_canary_the_detector_catches_request_ids_kept_by_the_logs(
    memory_settings: Settings,
) -> None:
    """The same workload through a formatter that keeps every request id must fail the rule."""
    with json_logs(KeepRequestIds()):
        rounds = await measure_app(create_app(memory_settings))
    print(rounds.describe())
    assert REQUEST_IDS, "the leaky formatter kept nothing: the canary exercised no leak"
    with pytest.raises(AssertionError, match="memory grows with the workload"):
        assert_bounded(rounds, GROWTH_BOUND_BYTES)
    assert rounds.growth > 4 * GROWTH_BOUND_BYTES, rounds.describe()


@contextmanager
def sdk_logs_to_null() -> Iterator[None]:
    """The OpenTelemetry SDK's own warnings ("Queue full, dropping span.", one each 20 s at
    most) written to the null device and not passed on to the root logger, as `json_logs` does
    for the service's: pytest keeps every record it sees, so they would grow with the time a
    round takes, not with its work."""
    logger = logging.getLogger("opentelemetry")
    propagate = logger.propagate
    with open(os.devnull, "w") as null:
        handler = logging.StreamHandler(null)
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate


def raw_path_route(scope: MutableMapping[str, Any]) -> str:
    """The classic metrics leak: the route label taken from the raw path."""
    path: str = scope["path"]
    return path


@pytest.fixture
def raw_path_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`route_of` replaced by `raw_path_route` for one test; the series it made are removed
    afterwards, so the leak stays in the canary."""
    monkeypatch.setattr(metrics, "route_of", raw_path_route)
    yield
    leaked = [key for key in metrics._request_children if key[1].startswith(UNKNOWN_PATH_PREFIX)]
    for method, route, status in leaked:
        metrics.REQUESTS.remove(method, route, status)
        metrics.DURATION.remove(route)
        del metrics._request_children[(method, route, status)]
    assert leaked, "the raw-path label made no series: the canary exercised no leak"


async def test_canary_the_detector_catches_a_route_label_from_the_raw_path(
    memory_settings: Settings, raw_path_metrics: None
) -> None:
    """The same workload with the metrics labelled by raw path (one new series per unknown
    path, kept forever) must fail the rule: the metrics path is inside the measurement."""
    rounds = await measure_app(create_app(memory_settings))
    print(rounds.describe())
    with pytest.raises(AssertionError, match="memory grows with the workload"):
        assert_bounded(rounds, GROWTH_BOUND_BYTES)
    assert rounds.growth > 4 * GROWTH_BOUND_BYTES, rounds.describe()


async def test_canary_the_detector_catches_payloads_kept_by_subject(
    memory_settings: Settings,
) -> None:
    """The same workload and rule must fail on the tutorial leak, or the test above is blind."""
    rounds = await measure_app(create_leaky_app(memory_settings))
    print(rounds.describe())
    assert PAYLOADS, "the leaky app kept nothing: the canary exercised no leak"
    with pytest.raises(AssertionError, match="memory grows with the workload"):
        assert_bounded(rounds, GROWTH_BOUND_BYTES)
    # Not a near miss: a leak several times smaller would still be caught.
    assert rounds.growth > 4 * GROWTH_BOUND_BYTES, rounds.describe()


REMOTE_FORGED_PER_ROUND = 300  # of each kind: unknown kids, and the right kid badly signed
REMOTE_SUBJECTS_PER_ROUND = 20


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    try:
        yield server
    finally:
        server.stop()


class RemoteWorkload:
    """One round against a remote-mode app: tokens naming fresh random kids, tokens with the
    right kid and fresh bad signatures (all 401), and valid tokens of fresh subjects (200).
    Anything kept per kid, per token or per subject grows from round to round."""

    def __init__(self, client: httpx.AsyncClient, settings: Settings, key: SigningKey) -> None:
        self.client = client
        self.settings = settings
        self.key = key

    async def __call__(self, number: int) -> int:
        subjects = [f"remote-{number}-{index}" for index in range(REMOTE_SUBJECTS_PER_ROUND)]
        for sub in subjects:
            await self.get_me(self.key.sign(claims_for(self.settings, sub)), 200)
        token = self.key.sign(claims_for(self.settings, subjects[0]))
        for forged in random_kid_tokens(token, REMOTE_FORGED_PER_ROUND):
            await self.get_me(forged, 401)
        for forged in bad_signature_tokens(token, REMOTE_FORGED_PER_ROUND):
            await self.get_me(forged, 401)
        return REMOTE_SUBJECTS_PER_ROUND + 2 * REMOTE_FORGED_PER_ROUND

    async def get_me(self, token: str, status: int) -> None:
        response = await self.client.get("/me", headers=bearer(token))
        assert response.status_code == status, response.text


async def measure_remote_app(
    create: Callable[[Settings], FastAPI], settings_for: Callable[..., Settings], server: KeyServer
) -> Rounds:
    """Rounds of `RemoteWorkload` on a remote-mode app built by `create` (RS256, keys made here;
    the remote side of the service is the same code in every bake)."""
    key = new_signing_key("RS256")
    server.serve(key.jwk())
    server.cache_control = "max-age=86400"  # no background refresh in the middle of a round
    server.start()
    settings = settings_for(
        jwt_algorithm="RS256",
        jwt_jwks_url=server.jwks_url,
        jwt_require_session=False,
        jwt_secret=None,
        jwt_private_key_file=None,
        jwt_public_key_file=None,
    )
    async with running(create(settings)) as client:
        return await measure(RemoteWorkload(client, settings, key), not_counted=[__file__])


async def test_remote_key_set_memory_stays_flat_under_forged_kids(
    settings_for: Callable[..., Settings], key_server: KeyServer
) -> None:
    """Hundreds of unknown kids and bad signatures a round: the key set is what the issuer
    published, nothing more, and nothing is kept per kid."""
    rounds = await measure_remote_app(create_app, settings_for, key_server)
    print(rounds.describe())
    assert_bounded(rounds, GROWTH_BOUND_BYTES)


async def test_canary_the_detector_catches_a_cache_keyed_by_kid(
    settings_for: Callable[..., Settings], key_server: KeyServer
) -> None:
    """The same workload on a verifier that remembers every unknown kid must fail the rule."""
    rounds = await measure_remote_app(create_leaky_remote_app, settings_for, key_server)
    print(rounds.describe())
    assert UNKNOWN_KIDS, "the leaky verifier kept nothing: the canary exercised no leak"
    with pytest.raises(AssertionError, match="memory grows with the workload"):
        assert_bounded(rounds, GROWTH_BOUND_BYTES)
    assert rounds.growth > 4 * GROWTH_BOUND_BYTES, rounds.describe()


# The stalled collector's queue, small so that the first round fills it (a round makes about
# 690 spans), and the batch the exporter waits on meanwhile.
STALLED_QUEUE = 64
STALLED_BATCH = 16


@pytest.fixture
def otel_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """`monkeypatch`, with every OTEL_* variable of the developer's shell removed, so that only
    the test's apply (a stray OTEL_SDK_DISABLED or OTEL_BSP_* would change what is measured)."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def collector(otel_environment: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A collector that accepts every span; the batch processor's own defaults otherwise."""
    with Collector() as collector:
        otel_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        yield collector


@pytest.fixture
def traced_settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(tracing="otlp")


def providers_made(
    monkeypatch: pytest.MonkeyPatch, make: Callable[..., TracerProvider] = TracerProvider
) -> list[TracerProvider]:
    """The SDK tracer providers made from now on, each by `make`: `Tracing.start` looks up
    `opentelemetry.sdk.trace.TracerProvider` as the app starts, and gets this instead. The test
    reaches the app's provider this way without a hook in the app."""
    made: list[TracerProvider] = []

    def record(*args: Any, **kwargs: Any) -> TracerProvider:
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("opentelemetry.sdk.trace.TracerProvider", record)
    return made


class SentEachRound:
    """A round of the workload, then every span it made sent and checked off at the collector.

    The provider's `force_flush` sends what the batch processor still holds, so the snapshot
    never sees a partly filled queue (how full depends on the exporter thread's timing, by up to
    a batch of 512 spans). Every request must have reached the collector as a server span: none
    dropped, none lost. Then the collector forgets them: what it received is the test's, not
    the app's (and its file is not counted: the bytes of the last request stay in its thread).
    """

    def __init__(
        self, workload: Workload, providers: list[TracerProvider], collector: Collector
    ) -> None:
        self.workload = workload
        self.providers = providers
        self.collector = collector

    async def __call__(self, number: int) -> int:
        requests = await self.workload(number)
        (provider,) = self.providers  # the app's, made as it started
        assert provider.force_flush(), "the spans of a round were not all sent"
        servers = sum(span.kind == "server" for span in self.collector.spans())
        assert servers == requests, f"{servers} server spans for {requests} requests"
        self.collector.clear()
        return requests


async def measure_sent_app(
    app: FastAPI, providers: list[TracerProvider], collector: Collector
) -> Rounds:
    """`measure_app` for a traced app whose spans go to `collector`, all of them each round."""
    async with running(app) as client:
        workload = SentEachRound(AuthWorkload(app, client), providers, collector)
        return await measure(workload, not_counted=[__file__, inspect.getfile(Collector)])


async def test_process_memory_stays_flat_with_every_span_sent_to_a_collector(
    traced_settings: Settings, collector: Collector, otel_environment: pytest.MonkeyPatch
) -> None:
    """The auth workload traced, each span sent over OTLP/HTTP and accepted: nothing of a span
    stays behind once it is sent (in the SDK, the exporter or the app), so no growth."""
    providers = providers_made(otel_environment)
    with json_logs(JsonFormatter()):
        rounds = await measure_sent_app(create_app(traced_settings), providers, collector)
    print(rounds.describe())
    assert_bounded(rounds, GROWTH_BOUND_BYTES)


async def test_canary_the_detector_catches_every_finished_span_kept(
    traced_settings: Settings, collector: Collector, otel_environment: pytest.MonkeyPatch
) -> None:
    """The same traced workload, with a span processor that keeps every span that ends next to
    the batch processor, must fail the rule."""
    providers = providers_made(otel_environment, keeping_tracer_provider)
    with json_logs(JsonFormatter()):
        rounds = await measure_sent_app(create_app(traced_settings), providers, collector)
    print(rounds.describe())
    assert FINISHED_SPANS, "the leaky processor kept nothing: the canary exercised no leak"
    with pytest.raises(AssertionError, match="memory grows with the workload"):
        assert_bounded(rounds, GROWTH_BOUND_BYTES)
    assert rounds.growth > 4 * GROWTH_BOUND_BYTES, rounds.describe()


# Last of the measured tests: when the stalled collector closes, the exporter's thread retries
# until the SDK's shutdown gives up on it (`SDK_SHUTDOWN_WAIT_SECONDS` in test_tracing.py), and
# its warnings, exceptions attached, would be counted by a measurement running meanwhile.
async def test_process_memory_stays_flat_while_a_stalled_collector_holds_the_queue_full(
    traced_settings: Settings, otel_environment: pytest.MonkeyPatch
) -> None:
    """The exporter's first batch waits on a collector that never answers, for longer than the
    test; the queue (`STALLED_QUEUE` spans) fills in the first warm-up round and stays full, each
    new span pushing the oldest out, dropped and counted. What waits is that batch and a full
    queue of the round's last spans, as many at every snapshot: no growth however many are
    dropped."""
    with StalledCollector() as stalled:
        otel_environment.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stalled.endpoint)
        otel_environment.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3600")  # seconds
        otel_environment.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(STALLED_QUEUE))
        otel_environment.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", str(STALLED_BATCH))
        dropped_before = dropped()
        with json_logs(JsonFormatter()), sdk_logs_to_null():
            rounds = await measure_app(create_app(traced_settings))
        dropped_spans = dropped() - dropped_before
    print(rounds.describe(), f"; {dropped_spans:.0f} spans dropped")
    # Each request of the traced rounds makes a span at least, and the queue was full for all.
    assert dropped_spans >= rounds.requests_per_round * len(rounds.sizes), dropped_spans
    assert_bounded(rounds, GROWTH_BOUND_BYTES)


def keys_of(redis: Redis, settings: Settings) -> set[str]:
    """Every key the app wrote under its prefix (SCAN, never KEYS)."""
    return set(redis.scan_iter(match=keyspace(settings).everything(), count=1000))


async def test_every_key_has_a_ttl_after_the_workload(
    settings_for: Callable[..., Settings], redis: Redis
) -> None:
    """After rounds of every kind of request, nothing in Redis lives forever."""
    settings = settings_for(rate_limit=LASTING_RATE)
    app = create_app(settings)
    async with running(app) as client:
        workload = AuthWorkload(app, client)
        for number in range(2):
            await workload(number)

    keys = keys_of(redis, settings)
    for user in (*LOGIN_USERS, workload.service_account):
        assert keyspace(settings).session_index(user) in keys
    for key in keys:
        # -2: a short-lived bucket expired between SCAN and PTTL; -1: a key without a TTL.
        assert redis.pttl(key) != -1, f"{key} has no TTL"


async def test_rejected_requests_write_no_keys(
    settings_for: Callable[..., Settings], redis: Redis
) -> None:
    """Thousands of rejected tokens and refresh tokens later, Redis holds the same keys."""
    settings = settings_for(rate_limit=LASTING_RATE)
    app = create_app(settings)
    async with running(app) as client:
        state = app_state(app)
        issuer = state.issuer().token_issuer
        tokens: list[str] = []
        refresh_tokens: list[str] = []
        for index in range(20):
            sub = f"alive-{index}"  # users with live sessions, so their keys exist
            alive = await state.stores.sessions.create(sub, SCOPES)
            ended = await state.stores.sessions.create(sub, SCOPES)
            await state.stores.sessions.revoke(sub, ended.sid)
            valid = issuer.issue(sub, alive.sid, SCOPES).token
            tokens.append(issuer.issue(sub, ended.sid, SCOPES).token)
            tokens.append(issuer.issue(sub, secrets.token_urlsafe(16), SCOPES).token)
            tokens.append(valid)  # forged and malformed from it below, never sent as is
            refresh_tokens.append(ended.refresh_token)
        before = keys_of(redis, settings)
        assert before

        for batch in range(2):
            for number in range(REJECTED_REQUESTS // 5):
                token = tokens[number % len(tokens)]
                if number % 3 == 2:  # the valid token: send only its forged and malformed kin
                    token = forged(token, number) if number % 2 else malformed(token, number)
                response = await client.get("/me", headers=bearer(token))
                assert response.status_code == 401, response.text
                for body in (
                    refresh_tokens[number % len(refresh_tokens)],  # a session that ended
                    malformed(refresh_tokens[0], number),
                ):
                    response = await client.post("/auth/refresh", json={"refresh_token": body})
                    assert response.status_code == 401, response.text
                response = await client.post("/auth/logout", headers=bearer(malformed(token, 0)))
                assert response.status_code == 401, response.text
                response = await client.get("/me")
                assert response.status_code == 401, response.text
            assert keys_of(redis, settings) == before, f"after batch {batch}"


async def test_the_session_index_stays_at_the_cap(memory_settings: Settings, redis: Redis) -> None:
    """Logging one user in far more often than the cap leaves at most the cap of sessions."""
    user = LOGIN_USERS[0]
    index = keyspace(memory_settings).session_index(user)
    app = create_app(memory_settings)
    async with running(app) as client:
        for _ in range(3 * MAX_SESSIONS):
            await login(client, user)
            assert redis.zcard(index) <= MAX_SESSIONS
        for _ in range(40 * MAX_SESSIONS):
            await app_state(app).stores.sessions.create(user, SCOPES)
            assert redis.zcard(index) <= MAX_SESSIONS

    sessions = set(
        redis.scan_iter(match=keyspace(memory_settings).session_prefix(user) + "*", count=1000)
    )
    assert len(sessions) == MAX_SESSIONS
    sids = {key.rpartition(":")[2] for key in sessions}
    assert set(redis.zrange(index, 0, -1)) == sids  # the index names exactly the live sessions
    assert redis.pttl(index) > 0
