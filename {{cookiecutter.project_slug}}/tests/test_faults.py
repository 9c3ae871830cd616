"""Redis faults: a frozen, refusing or restarted Redis gives prompt 503s, never a 500 or a hang,
and the service recovers by itself when Redis is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings, running
from .helpers import PASSWORD, add_user, assert_invalid_token, bearer, login
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

TIMEOUT_SECONDS = 0.25
NO_HANG_SECONDS = TIMEOUT_SECONDS + 1.0  # "the timeout plus a little", generously: not a speed test

Probe = tuple[int, float, str | None]  # status, seconds, Retry-After


async def probe(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> Probe:
    started = time.monotonic()
    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    return response.status_code, time.monotonic() - started, response.headers.get("Retry-After")


async def probe_all(client: httpx.AsyncClient, token: str) -> dict[str, Probe]:
    form = {"username": "alice", "password": PASSWORD}
    return {
        "GET /me": await probe(client, "GET", "/me", headers=bearer(token)),
        "POST /auth/token": await probe(client, "POST", "/auth/token", data=form),
        "GET /health/ready": await probe(client, "GET", "/health/ready"),
        "GET /health/live": await probe(client, "GET", "/health/live"),
    }


FAULTS: dict[str, tuple[Callable[[RedisServer], None], Callable[[RedisServer], None]]] = {
    "frozen (SIGSTOP)": (RedisServer.pause, RedisServer.resume),
    "refusing connections": (RedisServer.stop, RedisServer.start),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_redis_faults_give_prompt_503s_and_the_service_recovers(
    fault: str,
    redis_server: RedisServer,
    key_files: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(
        redis_server.url,
        key_files,
        users_file=tmp_path / "users.json",
        redis_timeout_seconds=TIMEOUT_SECONDS,
    )
    add_user(settings, "alice")
    start_fault, end_fault = FAULTS[fault]
    async with running(create_app(settings)) as client:
        pair = await login(client, "alice")
        token = pair["access_token"]
        start_fault(redis_server)
        try:
            during = await probe_all(client, token)
            token_routes = [
                await client.post("/auth/token", data={"username": "alice", "password": PASSWORD}),
                await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
            ]
        finally:
            end_fault(redis_server)
        after = await probe_all(client, token)
        old_token_after = await client.get("/me", headers=bearer(token))
        fresh = (await login(client, "alice"))["access_token"]
        fresh_after = await client.get("/me", headers=bearer(fresh))

    print(f"\n{fault}:")
    for name, (status, seconds, retry_after) in during.items():
        print(f"  {name:<18} {status}  {seconds * 1000:6.0f} ms  Retry-After: {retry_after}")
    for name, (status, seconds, retry_after) in during.items():
        if name == "GET /health/live":
            assert status == 200, during
        else:
            assert (status, retry_after) == (503, "1"), (name, during)
        assert seconds < NO_HANG_SECONDS, (name, during)
    for answer in token_routes:  # a token route's 503 is not to be stored either
        assert answer.status_code == 503, answer.text
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Pragma"] == "no-cache"

    # Back by itself: the pool reconnects and the scripts are loaded again where needed.
    after.pop("GET /me")  # depends on whether the session survived: checked below
    assert all(status == 200 for status, _, _ in after.values()), after
    if fault.startswith("frozen"):
        assert old_token_after.status_code == 200  # the session outlived the stall
    else:
        assert_invalid_token(old_token_after)  # it came back empty: that session is gone
    assert fresh_after.status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_after_an_empty_restart_old_sessions_are_401_and_login_works(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Redis restarted empty (no persistence): sessions are gone, so tokens are 401; the scripts
    are reloaded on NOSCRIPT and a new login works."""
    settings = make_settings(redis_server.url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        token = (await login(client, "alice"))["access_token"]
        redis_server.restart()
        assert_invalid_token(await client.get("/me", headers=bearer(token)))
        fresh = (await login(client, "alice"))["access_token"]
        assert (await client.get("/me", headers=bearer(fresh))).status_code == 200
