"""Health probes: liveness never needs Redis; readiness answers 503 promptly when Redis is gone."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings, running
from .helpers import wait_until_ready
from .redis_server import RedisServer
from .served import Served

pytestmark = pytest.mark.anyio

# With a timeout this short, a healthy Redis can miss it on a busy machine (this process not
# scheduled in time): readiness that must come back is polled for (`helpers.wait_until_ready`).
REDIS_TIMEOUT_SECONDS = 0.25
# What is asserted is "no hang", not speed: generous for a busy machine, yet below redis-py's
# own 5 s socket timeout, so a call left to the library's defaults still fails here.
NO_HANG_SECONDS = 4.0


async def test_live_and_ready_answer_200(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    response = await client.get("/health/ready")
    assert response.status_code == 200


# What load balancers probe with HEAD: each answers like GET, without the body.
PROBES = ("/health/live", "/health/ready", "/metrics")


async def test_head_answers_like_get(client: httpx.AsyncClient) -> None:
    for path in PROBES:
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path != "/metrics":  # the metrics move between two requests
            assert head.headers["content-length"] == got.headers["content-length"], path


async def test_a_405_on_a_probe_allows_get_and_head(client: httpx.AsyncClient) -> None:
    for path in PROBES:
        response = await client.post(path)
        assert response.status_code == 405, path
        assert response.headers["Allow"] == "GET, HEAD", path


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` as is on a new connection; read everything until the server closes it."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_the_served_process_answers_head_with_a_length_and_no_body(served: Served) -> None:
    """uvicorn drops the body of a HEAD answer; `Content-Length` still says what GET would send.
    A HEAD and a GET on one connection: were any body sent after the HEAD answer, the bytes
    would not split into exactly these two answers."""
    for path in PROBES:
        request = f"HEAD {path} HTTP/1.1\r\nHost: probe\r\n\r\n"
        request += f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        received = raw_exchange(served.service.url, request.encode())
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), (path, head)
        assert rest.startswith(b"HTTP/1.1 200 "), (path, rest[:200])  # nothing between
        head_length = header(head, b"content-length")
        get_head, _, get_body = rest.partition(b"\r\n\r\n")
        assert int(header(get_head, b"content-length")) == len(get_body), path
        if path != "/metrics":  # the metrics move between two requests
            assert head_length == header(get_head, b"content-length"), path


def header(block: bytes, name: bytes) -> bytes:
    """The value of header `name` in a response's header block (exactly one such header)."""
    [value] = [
        line.split(b":", 1)[1].strip()
        for line in block.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].strip().lower() == name
    ]
    return value


@pytest.fixture
async def private_client(
    redis_server: RedisServer, key_files: dict[str, Path]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose app uses a Redis that the test may freeze, stop and restart."""
    app = create_app(
        make_settings(redis_server.url, key_files, redis_timeout_seconds=REDIS_TIMEOUT_SECONDS)
    )
    async with running(app) as client:
        yield client


async def get_without_hanging(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """GET `path`; a hang (Redis stays frozen meanwhile) fails the test rather than stalling it."""
    with anyio.fail_after(NO_HANG_SECONDS):
        return await client.get(path)


async def test_ready_is_503_promptly_while_redis_is_frozen(
    private_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """A stalled Redis (SIGSTOP) makes readiness 503 within the timeout; liveness stays 200."""
    await wait_until_ready(private_client)
    redis_server.pause()
    try:
        response = await get_without_hanging(private_client, "/health/ready")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert (await private_client.get("/health/live")).status_code == 200
    finally:
        redis_server.resume()
    await wait_until_ready(private_client)


async def test_ready_recovers_after_redis_stops_and_comes_back(
    private_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """With Redis down readiness is 503; when it is back the pool reconnects by itself."""
    await wait_until_ready(private_client)
    redis_server.stop()
    response = await get_without_hanging(private_client, "/health/ready")
    assert response.status_code == 503
    assert (await private_client.get("/health/live")).status_code == 200
    redis_server.start()
    await wait_until_ready(private_client)
