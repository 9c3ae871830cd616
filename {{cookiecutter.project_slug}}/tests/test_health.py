"""Health probes: liveness never needs Redis; readiness answers 503 promptly when Redis is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

REDIS_TIMEOUT_SECONDS = 0.25
# What is asserted is "no hang", not speed: generous for a busy machine, yet below redis-py's
# own 5 s socket timeout, so a call left to the library's defaults still fails here.
NO_HANG_SECONDS = 4.0
# With a timeout this short, a healthy Redis can miss it on a busy machine (this process not
# scheduled in time); readiness that must come back is polled for until this deadline.
RECOVERY_DEADLINE_SECONDS = 30.0


async def test_live_and_ready_answer_200(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    response = await client.get("/health/ready")
    assert response.status_code == 200


@pytest.fixture
async def private_client(
    redis_server: RedisServer, key_files: dict[str, Path]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose app uses a Redis that the test may freeze, stop and restart."""
    app = create_app(
        make_settings(redis_server.url, key_files, redis_timeout_seconds=REDIS_TIMEOUT_SECONDS)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client


async def wait_until_ready(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_SECONDS
    while (response := await client.get("/health/ready")).status_code != 200:
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "readiness never came back"
        await anyio.sleep(0.1)


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
