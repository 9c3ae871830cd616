"""Clients that never finish a request, and more clients than a process should hold.

Against the served process (`serve`), over real sockets: a request head must be complete within
`APP_HEADER_TIMEOUT_SECONDS`, a body may not pause for longer, and connections beyond
`APP_MAX_CONNECTIONS` are answered 503 and closed, so descriptors never run out. The assertions
are about answers, counts and lower bounds on time (the server must not give up early); the
only upper bound is a generous ceiling on how long a test waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.edge_limits import RESERVED_DESCRIPTORS
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings
from .redis_server import free_port
from .served import Served, serve
from .test_cli import service_environment, wait_for
from .test_processes import Service, environment_for, kill

TIMEOUT_SECONDS = 4.0  # APP_HEADER_TIMEOUT_SECONDS of the served processes below
STALLED_PER_KIND = 20
CONNECTION_CAP = 20  # APP_MAX_CONNECTIONS of the process in the connection tests
WAIT_CEILING_SECONDS = TIMEOUT_SECONDS + 60  # how long a test waits for an answer at most
TRICKLE_INTERVAL_SECONDS = TIMEOUT_SECONDS / 8  # a header byte this often: never idle for long
BODY_GAP_SECONDS = TIMEOUT_SECONDS / 8  # a steady body: a piece this often
# Descriptor counts and limits are read from /proc: Linux only.
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")

REFRESH_HEAD = b"POST /auth/refresh HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
BODY = b'{"refresh_token": "made-up"}'
# What each kind of stalled client sends before it stops; None: nothing at all.
STALLS: dict[str, bytes | None] = {
    "nothing sent": None,
    "part of a request line": b"GET /health/li",
    "part of a header block": b"GET /health/live HTTP/1.1\r\nHost: test\r\n",
    "half a body": REFRESH_HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10],
    "half a chunked body": REFRESH_HEAD + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"ref\r\n',
}


@pytest.fixture(scope="module")
def patient(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A served process with a short header timeout and room for every test client."""
    folder = tmp_path_factory.mktemp("slow-clients")
    environment = {"APP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)}
    with serve(redis_url, key_files, folder, environment=environment) as process:
        yield process


@pytest.fixture(scope="module")
def capped(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A served process that holds at most `CONNECTION_CAP` connections."""
    environment = {
        "APP_HEADER_TIMEOUT_SECONDS": "300",  # the idle connections below hold the cap throughout
        "APP_MAX_CONNECTIONS": str(CONNECTION_CAP),
    }
    folder = tmp_path_factory.mktemp("capped")
    with serve(redis_url, key_files, folder, environment=environment) as process:
        yield process


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_descriptors(pid: int, at_most: int) -> int:
    """The process's descriptor count once it is `at_most` or fewer, or after the ceiling.
    (Fewer: a connection of the client that measured the baseline may have been open then.)"""
    deadline = time.monotonic() + WAIT_CEILING_SECONDS
    while (count := open_descriptors(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def connect(port: int, first: bytes | None = None) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT_CEILING_SECONDS)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if first:
        connection.sendall(first)
    return connection


def read_to_close(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer ends it too)."""
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def answered_408(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 408 ") and json.loads(body) == {"detail": "Request Timeout"}


def live(url: str) -> int:
    return httpx.get(f"{url}/health/live", timeout=WAIT_CEILING_SECONDS).status_code


@needs_proc
def test_clients_that_stop_sending_are_closed_after_the_timeout_while_others_are_served(
    patient: Served,
) -> None:
    """Twenty stalled connections of each kind, and twenty that trickle a header byte every
    half second: each is answered 408 (or, having sent nothing, just closed), none before the
    timeout; clients that behave get 200 all along, and the descriptors come back."""
    service, port = patient.service, patient.port
    pid = service.process.pid
    assert live(service.url) == 200
    baseline = open_descriptors(pid)

    stalled = [
        (kind, connect(port, first), time.monotonic())
        for kind, first in STALLS.items()
        for _ in range(STALLED_PER_KIND)
    ]
    tricklers = [connect(port, b"GET /health/live HTTP/1.1\r\n") for _ in range(STALLED_PER_KIND)]
    trickle_started = time.monotonic()
    closed = threading.Event()
    served: list[int] = []

    def trickle() -> None:  # one header byte per connection per interval, until all are closed
        while not closed.wait(TRICKLE_INTERVAL_SECONDS):
            for connection in tricklers:
                with contextlib.suppress(OSError):  # answered and closed: the others go on
                    connection.sendall(b"X")

    def behave() -> None:  # an ordinary client, on new connections, all the while
        while not closed.wait(0.2):
            served.append(live(service.url))

    def wait_for_answer(item: tuple[str, socket.socket, float]) -> tuple[str, bytes, float]:
        kind, connection, started = item
        with connection:
            answer = read_to_close(connection)
        return kind, answer, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(stalled) + len(tricklers) + 2) as pool:
        background = [pool.submit(trickle), pool.submit(behave)]
        try:
            answers = list(pool.map(wait_for_answer, stalled))
            trickled = list(
                pool.map(wait_for_answer, [("trickle", c, trickle_started) for c in tricklers])
            )
        finally:
            closed.set()  # also when a wait failed: the pool cannot shut down before these end
        for future in background:
            future.result()

    assert served
    assert served == [200] * len(served)
    for kind, answer, elapsed in answers + trickled:
        if STALLS.get(kind, b"") is None:
            assert answer == b"", (kind, answer[:100])
        else:
            assert answered_408(answer), (kind, answer[:200])
        assert elapsed >= TIMEOUT_SECONDS * 0.99, (kind, elapsed)  # never before the timeout
    assert wait_for_descriptors(pid, baseline) <= baseline


def send_body(port: int, pieces: list[bytes], gap_seconds: float) -> bytes:
    """A refresh request whose body is sent in `pieces`, `gap_seconds` apart; the answer."""
    body = b"".join(pieces)
    with connect(port, REFRESH_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)) as connection:
        for piece in pieces:
            time.sleep(gap_seconds)
            try:
                connection.sendall(piece)
            except OSError:
                break  # refused: read the answer
        return read_to_close(connection)


def test_a_body_that_keeps_arriving_is_read_however_long_it_takes(
    patient: Served,
) -> None:
    """Twelve pieces half a second apart: six seconds in all, more than the timeout, but never
    a pause as long as it. The body is read and the made-up token refused (401)."""
    pieces = [BODY[i : i + 3] for i in range(0, len(BODY), 3)]
    assert len(pieces) * BODY_GAP_SECONDS > TIMEOUT_SECONDS
    answer = send_body(patient.port, pieces, BODY_GAP_SECONDS)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def test_a_body_that_pauses_for_longer_than_the_timeout_is_refused_with_408(
    patient: Served,
) -> None:
    """Half the body, then a pause of one and a half timeouts: 408, and the request line in the
    log says 408 (not the app's answer to a body that never came)."""
    port, log = patient.port, patient.log
    started = time.monotonic()
    answer = send_body(port, [BODY[:10], BODY[10:]], TIMEOUT_SECONDS * 1.5)
    assert answered_408(answer), answer[:200]
    assert time.monotonic() - started >= TIMEOUT_SECONDS
    deadline = time.monotonic() + WAIT_CEILING_SECONDS  # the app writes its line after this
    while (line := request_line(log)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line is not None
    assert '" 408 ' in line, line


def request_line(log: Path) -> str | None:
    lines = [line for line in log.read_text().splitlines() if "POST /auth/refresh" in line]
    return lines[-1] if lines else None


@needs_proc
def test_connections_beyond_the_cap_are_answered_503_and_closed(
    capped: Served,
) -> None:
    """With the cap held by idle connections, 100 more clients each get a 503 with Retry-After
    and a closed connection; the process holds no descriptor for them. Once the idle ones are
    gone, requests are served again."""
    service, port, log = capped.service, capped.port, capped.log
    pid = service.process.pid
    assert live(service.url) == 200
    baseline = open_descriptors(pid)
    idle = [connect(port) for _ in range(CONNECTION_CAP)]
    try:
        assert wait_for_descriptors(pid, baseline + CONNECTION_CAP) <= baseline + CONNECTION_CAP

        def one_more(_: int) -> bytes:
            with connect(port, b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n") as connection:
                return read_to_close(connection)

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(one_more, range(100)))
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert {b"retry-after: 1", b"connection: close"} <= set(head.lower().split(b"\r\n"))
            assert json.loads(body) == {"detail": "Service Unavailable"}
        assert open_descriptors(pid) <= baseline + CONNECTION_CAP
    finally:
        for connection in idle:
            connection.close()
    assert wait_for_descriptors(pid, baseline) <= baseline
    assert live(service.url) == 200
    warnings = log.read_text().count("Exceeded concurrency limit.")
    assert 1 <= warnings <= 3  # one line per 10 s window, not one per refused client


def serve_command(port: int, descriptors: tuple[int, int]) -> list[str]:
    """`serve` on `port` in a process that may open `descriptors` (soft, hard) files: the limit is
    set by the child's own first line (no `preexec_fn`, which is unsafe in a threaded parent)."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, {descriptors})"
    run = "import runpy; runpy.run_module('{{ cookiecutter.package_name }}', run_name='__main__')"
    return [sys.executable, "-c", f"{limit}; {run}", "serve", "--port", str(port)]


def needed_descriptors(settings: Settings) -> int:
    return settings.max_connections + settings.redis_max_connections + RESERVED_DESCRIPTORS


@needs_proc
def test_serve_raises_its_descriptor_limit_to_what_the_connection_cap_needs(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    needed = needed_descriptors(settings)
    environment = environment_for(settings, redis_url, key_files)
    port = free_port()
    process = subprocess.Popen(
        serve_command(port, (256, needed + 100)),
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{port}/health/live", process).status_code == 200
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(needed), str(needed + 100)], line
    finally:
        kill(Service(process, ""))


@pytest.mark.skipif(sys.platform == "win32", reason="no descriptor limits to refuse")
def test_serve_refuses_a_connection_cap_the_descriptor_limit_cannot_hold(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    environment = service_environment(redis_url, key_files, APP_MAX_CONNECTIONS="1000")
    result = subprocess.run(
        serve_command(free_port(), (256, 256)),
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: APP_MAX_CONNECTIONS: 1000 connections"), result.stderr
    assert "at most 256 (ulimit -Hn)" in result.stderr
