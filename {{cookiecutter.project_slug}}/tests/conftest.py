"""Shared fixtures: a real Redis for the session, and apps built from test settings.

Redis is `REDIS_URL` when set (use a database you can spare: tests write keys under a fresh
prefix and remove them), otherwise a throwaway `redis-server` on a free port.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis import Redis

from {{ cookiecutter.package_name }}.keyspace import Keyspace
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .keys import write_key_pair
from .redis_server import NO_REDIS, RedisServer

# Fixtures of their own modules, available to every test module that asks for them by name:
# a remote issuer's keys, key server and settings (`algorithm`, `issuer_key`, `third_key`,
# `key_server`, `remote_settings`), and a `serve` process of the test's own (`served`).
pytest_plugins = ["tests.remote_issuer", "tests.served"]

# Generous: on a busy machine a Redis reply can take longer than the service's 0.5 s default,
# and an ordinary test is no timing test. The tests about timeouts set a short one themselves.
TEST_REDIS_TIMEOUT_SECONDS = 5.0
# The cheapest argon2 parameters: tests check behaviour, not hashing cost.
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis every test talks to: REDIS_URL, or a throwaway server for this session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    try:
        server = RedisServer()
    except FileNotFoundError:
        pytest.exit(NO_REDIS, returncode=4)
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key pair for RS256/ES256 made for this test session (the bake's keys are git-ignored)."""
    folder = tmp_path_factory.mktemp("keys")
    algorithm = Settings.model_fields["jwt_algorithm"].default
    return write_key_pair(algorithm, folder)


UNREACHABLE_RATE = "999999999/second"


def make_settings(redis_url: str, key_files: dict[str, Path], **overrides: Any) -> Settings:
    """Test settings: no `.env`, a fresh Redis key prefix, fresh secrets, a generous timeout,
    cheap password hashing and limits that ordinary tests never reach."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_key_prefix": f"test-{secrets.token_hex(6)}",
        "redis_timeout_seconds": TEST_REDIS_TIMEOUT_SECONDS,
        "jwt_secret": secrets.token_urlsafe(48),
        "jwt_private_key_file": key_files["private"],
        "jwt_public_key_file": key_files["public"],
        **CHEAP_ARGON2,
        # Limits that ordinary tests never reach; the rate-limit tests set their own.
        "rate_limit": UNREACHABLE_RATE,
        "login_rate_limit": UNREACHABLE_RATE,
    }
    values.update(overrides)
    if "users_file" in values and "clients_file" not in values:  # service accounts beside users
        values["clients_file"] = Path(values["users_file"]).parent / "clients.json"
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(redis_url: str, key_files: dict[str, Path], tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    yield settings
    delete_keys(redis_url, settings.redis_key_prefix)


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove what a test wrote, so a shared REDIS_URL is left as it was found."""
    with Redis.from_url(redis_url) as redis:
        for key in redis.scan_iter(match=Keyspace(prefix).everything(), count=1000):
            redis.delete(key)


def keyspace(settings: Settings) -> Keyspace:
    """The key names the app built from `settings` writes: tests never spell a key by hand."""
    return Keyspace(settings.redis_key_prefix)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to `app` in-process, with its lifespan (Redis pool) running."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A plain client for looking at what the service wrote."""
    with Redis.from_url(redis_url, decode_responses=True) as redis:
        yield redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for tests that pause, stop or restart it."""
    try:
        server = RedisServer()
    except FileNotFoundError:
        pytest.skip(NO_REDIS)
    server.start()
    try:
        yield server
    finally:
        server.close()
