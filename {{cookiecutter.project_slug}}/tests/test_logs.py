"""What `python -m {{ cookiecutter.package_name }} serve` writes to its log, read from its output:
paths without query strings, one format for every line, a flood of malformed requests and a
Redis outage each in a few lines."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }} import outage
from {{ cookiecutter.package_name }}.logs import (
    CLIENT_WARNING_WINDOW_SECONDS,
    PACKAGE,
    RepeatedClientWarnings,
)
from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings, running
from .helpers import add_user, bearer, login
from .redis_server import RedisServer
from .test_processes import (
    Service,
    environment_for,
    new_user,
    start_service,
    wait_until_ready,
)

STOP_SECONDS = 60  # a ceiling: two workers may still be starting when SIGTERM comes
# `<time> <LEVEL> <logger>: <message>`, e.g. "2025-01-31 12:00:00,123 WARNING uvicorn.error: ..."
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+): ")
LOAD_THREADS = 16
MIN_REQUESTS = 2000
LOAD_SECONDS = outage.WINDOW_SECONDS + 1  # failures in two windows: at least one summary
END_TIMEOUT_SECONDS = 4 * outage.WINDOW_SECONDS  # a guard against hanging, not a measurement
MALFORMED_REQUESTS = 500
INVALID_REQUEST = "Invalid HTTP request received."


def is_request_line(line: str, request: str, status: int) -> bool:
    """A text request line, e.g. `... 127.0.0.1 - "GET /me HTTP/1.1" 401 0.8 ms <request id>`."""
    ending = rf'"{re.escape(request)} HTTP/1\.1" {status} \d+\.\d ms [0-9a-f]+$'
    return re.search(ending, line) is not None


class Output:
    """The service's output, read as it comes: a full pipe would block the service."""

    def __init__(self, service: Service) -> None:
        assert service.process.stdout is not None
        self._service = service
        self._stream = service.process.stdout
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"{text!r} never logged:\n" + self.tail()
            time.sleep(0.1)

    def close(self) -> None:
        """Kill the service if it still runs, then read its output to the end."""
        self._service.kill()
        self._reader.join()
        self._stream.close()

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])


def stop(service: Service, output: Output) -> None:
    """SIGTERM, then the rest of the output; the service must exit 0 without a traceback."""
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(timeout=STOP_SECONDS)
    output.close()
    assert service.process.returncode == 0, output.tail()
    assert not [line for line in output.lines if "Traceback" in line]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_logged_requests_carry_their_path_without_the_query_string(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, workers: str
) -> None:
    """A secret in a query string (an HTTP request or a WebSocket handshake) never reaches the
    log, in one process or several; each line has a time, a level and the logger's name."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    service = start_service(
        environment_for(settings, redis_url, key_files), tmp_path, "--workers", workers
    )
    wait_until_ready(service)
    output = Output(service)
    secret = secrets.token_urlsafe(24)
    try:
        with httpx.Client(base_url=service.url, timeout=10) as http:
            assert http.get(f"/me?access_token={secret}").status_code == 401
            assert http.get(f"/health/live?x={secret}").status_code == 200
            handshake = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            assert http.get(f"/me?access_token={secret}", headers=handshake).status_code == 403
        stop(service, output)
    finally:
        output.close()

    assert not [line for line in output.lines if secret in line]
    access = [line for line in output.lines if f"{PACKAGE}.access" in line]
    assert any(is_request_line(line, "GET /me", 401) for line in access), output.tail()
    assert any(is_request_line(line, "GET /health/live", 200) for line in access), access
    assert any('"WebSocket /me" 403' in line for line in output.lines), output.tail()
    for line in output.lines:
        assert LINE.match(line), line


def send_malformed_request(port: int) -> bytes:
    """Bytes that are not HTTP; uvicorn answers 400 and closes. Returns the answer."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        try:
            while chunk := connection.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_a_flood_of_malformed_requests_is_logged_in_a_few_lines(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """uvicorn warns once per malformed request; the log holds one such line per window, and
    the next says how many were left out. Each request still gets its 400."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    service = start_service(environment_for(settings, redis_url, key_files), tmp_path)
    wait_until_ready(service)
    output = Output(service)
    port = int(service.url.rpartition(":")[2])
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send_malformed_request, [port] * MALFORMED_REQUESTS))
        windows = 1 + int((time.monotonic() - started) / CLIENT_WARNING_WINDOW_SECONDS)
        stop(service, output)
    finally:
        output.close()

    assert all(answer.startswith(b"HTTP/1.1 400 ") for answer in answers), answers[:3]
    warnings = [line for line in output.lines if INVALID_REQUEST in line]
    assert 1 <= len(warnings) <= windows, "\n".join(warnings[:20])


def test_repeated_client_warnings_are_counted_into_the_next_line() -> None:
    """The window logic on its own, with a clock the test moves: the first line passes, the
    rest of its window is counted, the first line of a later window says how many; other
    messages are never held back."""
    now = [0.0]
    sampler = RepeatedClientWarnings(window_seconds=10, clock=lambda: now[0])

    def passes(message: str) -> tuple[bool, str]:
        record = logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, message, None, None)
        return sampler.filter(record), record.getMessage()

    assert passes(INVALID_REQUEST) == (True, INVALID_REQUEST)
    for second in range(1, 10):
        now[0] = second
        assert passes(INVALID_REQUEST)[0] is False
        assert passes("Shutting down") == (True, "Shutting down")
    now[0] = 10.5
    assert passes(INVALID_REQUEST) == (
        True,
        f"{INVALID_REQUEST} (9 more since the last such line, not logged)",
    )
    now[0] = 30
    assert passes(INVALID_REQUEST) == (True, INVALID_REQUEST)


def test_a_redis_outage_under_load_is_logged_in_a_few_lines(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Redis stops while thousands of requests come in: the log gets the outage's start, a
    summary per 10 s window and, once Redis is back, its end with the totals; not a line per
    request. Authenticated requests are 503; logins skip their limit (failing open)."""
    settings = make_settings(
        redis_server.url,
        key_files,
        users_file=tmp_path / "users.json",
        rate_limit="1000000/minute",
        login_rate_limit="1000000/minute",
    )
    environment = environment_for(settings, redis_server.url, key_files)
    environment["APP_RATE_LIMIT_FAIL_OPEN"] = "true"
    service = start_service(environment, tmp_path)
    wait_until_ready(service)
    output = Output(service)
    try:
        token = service.login(new_user(settings))["access_token"]
        limits = httpx.Limits(max_connections=LOAD_THREADS)

        def load(http: httpx.Client, until: float) -> Counter[tuple[str, int]]:
            statuses: Counter[tuple[str, int]] = Counter()
            while time.monotonic() < until or statuses.total() < MIN_REQUESTS // LOAD_THREADS:
                me = http.get("/me", headers=bearer(token))
                statuses["/me", me.status_code] += 1
                attempt = http.post("/auth/token", data={"username": "nobody", "password": "x"})
                statuses["/auth/token", attempt.status_code] += 1
            return statuses

        redis_server.stop()
        started = time.monotonic()
        with (
            httpx.Client(base_url=service.url, limits=limits, timeout=10) as http,
            ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool,
        ):
            until = started + LOAD_SECONDS
            futures = [pool.submit(load, http, until) for _ in range(LOAD_THREADS)]
            statuses = sum((future.result() for future in futures), Counter[tuple[str, int]]())
        load_seconds = time.monotonic() - started
        redis_server.start()  # same port, empty
        output.wait_for("Redis answers again", END_TIMEOUT_SECONDS)
        stop(service, output)
    finally:
        output.close()

    failed, skipped = statuses["/me", 503], statuses["/auth/token", 401]
    assert failed + skipped == statuses.total() >= MIN_REQUESTS, statuses
    redis_lines = [line for line in output.lines if "Redis" in line]
    windows = int(load_seconds // outage.WINDOW_SECONDS) + 2  # the last one without failures
    assert 3 <= len(redis_lines) <= windows + 2, "\n".join(redis_lines[:20])

    start, *summaries, end = redis_lines
    assert LINE.match(start), start
    assert LINE.match(end), end
    # The error's class only: Redis error texts can hold key names, which hold user names.
    started_line = rf"WARNING {outage.logger.name}: Redis unavailable \(\w+Error\): outage started"
    assert re.search(started_line + "$", start), start
    assert summaries, redis_lines
    assert all("Redis still unavailable" in line for line in summaries), summaries
    # Every request the service answered while Redis was down is counted, once.
    assert end.endswith(
        f"{failed} requests answered 503, {skipped} rate-limit checks skipped in all"
    ), end


@pytest.mark.anyio
async def test_the_outage_task_ends_with_the_app(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Shut down during an outage: the task that reports it is cancelled and awaited."""
    settings = make_settings(redis_server.url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    before = asyncio.all_tasks()
    async with running(create_app(settings)) as client:
        token = (await login(client, "alice"))["access_token"]
        redis_server.stop()
        assert (await client.get("/me", headers=bearer(token))).status_code == 503
        assert [task for task in asyncio.all_tasks() if reports_an_outage(task)]
    assert not [task for task in asyncio.all_tasks() - before if not task.done()]


def reports_an_outage(task: asyncio.Task[object]) -> bool:
    name: str = getattr(task.get_coro(), "__qualname__", "")
    return name == "RedisOutage._watch"
