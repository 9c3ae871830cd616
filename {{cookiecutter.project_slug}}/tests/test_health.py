"""Health probes: liveness never needs Redis; readiness answers 503 promptly when Redis is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

REDIS_TIMEOUT_SECONDS = 0.25
# Generous: what is asserted is "no hang", not speed (a stalled call would take seconds).
NO_HANG_SECONDS = 2.0


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


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path)
    return response, time.monotonic() - started


async def test_ready_is_503_promptly_while_redis_is_frozen(
    private_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """A stalled Redis (SIGSTOP) makes readiness 503 within the timeout; liveness stays 200."""
    assert (await private_client.get("/health/ready")).status_code == 200
    redis_server.pause()
    try:
        response, elapsed = await timed_get(private_client, "/health/ready")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert elapsed < NO_HANG_SECONDS
        assert (await private_client.get("/health/live")).status_code == 200
    finally:
        redis_server.resume()
    assert (await private_client.get("/health/ready")).status_code == 200


async def test_ready_recovers_after_redis_stops_and_comes_back(
    private_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    """With Redis down readiness is 503; when it is back the pool reconnects by itself."""
    assert (await private_client.get("/health/ready")).status_code == 200
    redis_server.stop()
    response, elapsed = await timed_get(private_client, "/health/ready")
    assert response.status_code == 503
    assert elapsed < NO_HANG_SECONDS
    assert (await private_client.get("/health/live")).status_code == 200
    redis_server.start()
    assert (await private_client.get("/health/ready")).status_code == 200
