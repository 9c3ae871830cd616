"""`GET /metrics`: it parses, its counters move, and its series stay bounded whatever the traffic.

The boundedness test runs a real `serve` process through 20,000 requests that differ in every
way a careless label would pick up (paths, tokens, request ids, client addresses) and requires
the same number of series at the end as after the first 100. Its canary runs the same workload
on a service whose route label is the raw path, and requires the count to grow.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings, running
from .helpers import PASSWORD, add_user, bearer, login
from .redis_server import free_port
from .test_processes import STOP_SECONDS, Service, environment_for, kill, wait_until_ready

pytestmark = pytest.mark.anyio

TOTAL_REQUESTS = 20_000
FIRST_REQUESTS = 100  # ten rounds of `KINDS`: every kind of request has been seen by then
CANARY_REQUESTS = 1_000
CLIENTS = 4  # threads, each with its own connection
USERS = 5


# Each exported series (sample name and labels) with its value.
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Series:
    """Every exported series (sample name and labels) with its value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> Series:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_parse_and_the_counters_move(app: FastAPI, settings: Settings) -> None:
    add_user(settings, "metered", scopes=[])
    async with running(app) as client:
        before = await scrape(client)
        assert value(before, "process_resident_memory_bytes") > 0
        await client.get("/me")
        await client.get("/me", headers=bearer("not-a-token"))
        await client.post("/auth/token", data={"username": "metered", "password": "wrong" * 4})
        token = (await login(client, "metered"))["access_token"]
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        after = await scrape(client)
    for reason in ("missing", "invalid", "login"):
        grown = value(after, "auth_rejections_total", reason=reason)
        assert grown == value(before, "auth_rejections_total", reason=reason) + 1, reason
    assert value(after, "auth_rejections_total", reason="session") == value(
        before, "auth_rejections_total", reason="session"
    )


async def test_a_429_and_a_redis_error_are_counted(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", login_rate_limit="1/minute"
    )
    async with running(create_app(settings)) as client:
        before = await scrape(client)
        form = {"username": "nobody", "password": PASSWORD}
        statuses = [(await client.post("/auth/token", data=form)).status_code for _ in range(2)]
        assert statuses == [401, 429]
        after = await scrape(client)
    assert (
        value(after, "rate_limited_total", policy="login")
        == value(before, "rate_limited_total", policy="login") + 1
    )
    kinds = {kind: value(after, "redis_errors_total", kind=kind) for kind in metrics.REDIS_KINDS}
    metrics.redis_failed(TimeoutError())
    metrics.redis_failed(ConnectionRefusedError())
    assert value(parse_local(), "redis_errors_total", kind="timeout") == kinds["timeout"] + 1
    assert value(parse_local(), "redis_errors_total", kind="connection") == kinds["connection"] + 1


def parse_local() -> Series:
    return parse(metrics.exposition().decode())


async def test_app_metrics_false_removes_the_route(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "u.json", metrics=False)
    async with running(create_app(settings)) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_route_of_is_the_template_never_the_raw_path(app: FastAPI) -> None:
    scopes: list[Scope] = []

    async def keep_scope(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        scopes.append(scope)  # as the middleware reads it: after the app ran

    transport = httpx.ASGITransport(app=keep_scope)
    async with running(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/me", "/me?user=alice", "/health/live", "/users/alice/42", "/auth/token"):
            await client.get(path)
    routes = [metrics.route_of(scope) for scope in scopes]
    assert routes == ["/me", "/me", "/health/live", "unmatched", "/auth/token"]


# --- A served process, 20,000 requests -----------------------------------------------------


def forged(token: str) -> str:
    """A token with a valid shape whose signature does not match: a fresh one each call."""
    head, body, _ = token.split(".")
    return f"{head}.{body}.{secrets.token_urlsafe(32)}"


class Workload:
    """Requests that differ in path, token, request id and client address on every call, in a
    fixed cycle of kinds, so the first `FIRST_REQUESTS` have met every kind of answer."""

    def __init__(self, service: Service, users: list[str]) -> None:
        self.service = service
        self.users = itertools.cycle(users)
        self.token = ""

    def headers(self, **extra: str) -> dict[str, str]:
        address = (
            f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"
        )
        return {"X-Request-ID": secrets.token_hex(16), "X-Forwarded-For": address, **extra}

    def request(self, client: httpx.Client, kind: int) -> int:
        random_path = "/" + "/".join(
            secrets.token_urlsafe(6) for _ in range(1 + secrets.randbelow(3))
        )
        if kind == 0 or not self.token:
            data = {"username": next(self.users), "password": PASSWORD}
            response = client.post("/auth/token", data=data, headers=self.headers())
            self.token = response.json()["access_token"]  # a new, distinct valid token
        elif kind in (1, 2):
            response = client.get("/me", headers=self.headers(Authorization=f"Bearer {self.token}"))
        elif kind == 3:
            forgery = forged(self.token)
            response = client.get("/me", headers=self.headers(Authorization=f"Bearer {forgery}"))
        elif kind == 4:
            response = client.get("/me", headers=self.headers())
        elif kind == 5:
            response = client.get(random_path, headers=self.headers())
        elif kind == 6:
            response = client.post(random_path, headers=self.headers())
        elif kind == 7:
            response = client.get(f"/me?{secrets.token_hex(8)}=1", headers=self.headers())
        elif kind == 8:
            response = client.get("/health/live", headers=self.headers())
        else:
            response = client.get("/metrics", headers=self.headers())
        return response.status_code

    def run(self, requests: int) -> list[int]:
        with httpx.Client(base_url=self.service.url, timeout=30) as client:
            return [self.request(client, kind % 10) for kind in range(requests)]


def series_count(service: Service) -> tuple[int, Series]:
    response = httpx.get(service.url + "/metrics", timeout=30)
    assert response.status_code == 200
    series = parse(response.text)
    return len(series), series


def run_workload(service: Service, users: list[str], total: int) -> tuple[int, int, float]:
    """Series after the first 100 requests and after `total`, and /me answers counted between."""
    statuses = Workload(service, users).run(FIRST_REQUESTS)
    assert set(statuses) >= {200, 401, 404}, statuses
    first, early = series_count(service)
    rest = (total - FIRST_REQUESTS) // CLIENTS
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        runs = [pool.submit(Workload(service, users).run, rest) for _ in range(CLIENTS)]
        answered = [status for run in runs for status in run.result()]
    assert 500 not in answered
    last, late = series_count(service)
    labels = {"method": "GET", "route": "/me", "status": "200"}
    moved = value(late, "http_requests_total", **labels)
    moved -= value(early, "http_requests_total", **labels)
    return first, last, moved


SERVE = ("-m", "{{ cookiecutter.package_name }}")
# The same command, with the route label taken from the raw path: the classic leak.
LEAKY_SERVE = (
    "-c",
    "import sys; from tests.leaky_metrics import label_by_raw_path; label_by_raw_path(); "
    "from {{ cookiecutter.package_name }}.cli import main; sys.exit(main(sys.argv[1:]))",
)


@pytest.fixture
def served_settings(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> Iterator[Settings]:
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    for index in range(USERS):
        add_user(settings, f"metered-{index}", scopes=["read"])
    yield settings
    delete_keys(redis_url, settings.redis_key_prefix)


def serve(
    settings: Settings,
    redis_url: str,
    key_files: dict[str, Path],
    folder: Path,
    python: tuple[str, ...] = SERVE,
    *options: str,
) -> Service:
    """`python *python serve *options` behind a trusted proxy (this test), output to a file."""
    environment = environment_for(settings, redis_url, key_files)
    environment["APP_TRUSTED_PROXIES"] = "127.0.0.1/32"
    tests_root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join([environment["PYTHONPATH"], tests_root])
    port = free_port()
    with (folder / "service.log").open("w") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [sys.executable, *python, "serve", "--port", str(port), *options],
            env=environment,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so that `Service.kill` takes its workers too
        )
    service = Service(process, f"http://127.0.0.1:{port}", own_group=True)
    wait_until_ready(service)
    return service


@pytest.mark.parametrize(("command", "requests"), [(SERVE, TOTAL_REQUESTS)], ids=["serve"])
def test_series_stay_bounded_over_20000_requests(
    served_settings: Settings,
    redis_url: str,
    key_files: dict[str, Path],
    tmp_path: Path,
    command: tuple[str, ...],
    requests: int,
) -> None:
    service = serve(served_settings, redis_url, key_files, tmp_path, command)
    users = [f"metered-{index}" for index in range(USERS)]
    try:
        first, last, moved = run_workload(service, users, requests)
    finally:
        kill(service)
    print(f"series after {FIRST_REQUESTS} requests: {first}; after {requests}: {last}")
    assert moved >= (requests - FIRST_REQUESTS) // 5  # two in ten requests are a good /me
    assert last == first


def test_canary_a_route_label_from_the_raw_path_grows_the_series(
    served_settings: Settings, redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    service = serve(served_settings, redis_url, key_files, tmp_path, LEAKY_SERVE)
    users = [f"metered-{index}" for index in range(USERS)]
    try:
        first, last, _ = run_workload(service, users, CANARY_REQUESTS)
    finally:
        kill(service)
    assert last > first + CANARY_REQUESTS // 10, (first, last)


# --- serve --workers 2 ---------------------------------------------------------------------


def multiproc_dir(pid: int) -> Path:
    """The directory `serve` gave its workers (their environment, as they started with it)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        for entry in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            name, _, found = entry.partition(b"=")
            if name == metrics.MULTIPROC_DIR_VARIABLE.encode():
                return Path(found.decode())
    raise AssertionError("serve gave its workers no PROMETHEUS_MULTIPROC_DIR")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_every_worker_is_counted_and_the_directory_is_removed(
    served_settings: Settings, redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Two workers each count their own requests; any scrape shows the sum of both."""
    service = serve(served_settings, redis_url, key_files, tmp_path, SERVE, "--workers", "2")
    try:
        folder = multiproc_dir(service.process.pid)
        assert folder.is_dir()
        base = value(series_count(service)[1], "auth_rejections_total", reason="missing")
        requests = 60
        for _ in range(requests):  # a new connection each: the workers share them out
            assert httpx.get(service.url + "/me", timeout=10).status_code == 401
        totals = [
            value(series_count(service)[1], "auth_rejections_total", reason="missing") - base
            for _ in range(10)
        ]
        assert totals == [requests] * 10
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=STOP_SECONDS * 2)
    finally:
        kill(service)
    assert not folder.exists()


def test_all_counters_come_from_fixed_label_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metric functions map what they are given into their fixed sets."""
    assert metrics.redis_error_kind(ValueError()) == "other"
    monkeypatch.setattr(metrics, "_policies", set())  # this test's own; others keep theirs
    for index in range(metrics.MAX_POLICIES * 2):
        metrics.rate_limited(f"policy-{index}")
    series = parse_local()
    policies = {labels for name, labels in series if name == "rate_limited_total"}
    assert (("policy", "other"),) in policies
    assert f"policy-{metrics.MAX_POLICIES}" not in str(policies)
    metrics.observe_request("BREW", "/me", 999, 0.001)
    series = parse_local()
    assert value(series, "http_requests_total", method="other", route="/me", status="other") >= 1
