"""Redis faults: a frozen, refusing or restarted Redis gives prompt 503s, never a 500 or a hang,
and the service recovers by itself when Redis is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings, running
from .helpers import PASSWORD, add_user, assert_invalid_token, bearer, login
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

TIMEOUT_SECONDS = 0.25
# What is asserted is "no hang", not speed: generous for a busy machine, yet below redis-py's
# own 5 s socket timeout, so a call left to the library's defaults still fails here.
NO_HANG_SECONDS = 4.0
# With a timeout this short, a healthy Redis can miss it on a busy machine (this process not
# scheduled in time): a request that must succeed is repeated while it answers 503, until this.
RECOVERY_DEADLINE_SECONDS = 30.0

Probe = tuple[int, float, str | None]  # status, seconds, Retry-After


async def probe(client: httpx.AsyncClient, method: str, path: str, **kwargs: object) -> Probe:
    started = time.monotonic()
    response = await without_hanging(client.request(method, path, **kwargs))  # type: ignore[arg-type]
    return response.status_code, time.monotonic() - started, response.headers.get("Retry-After")


async def without_hanging(request: Awaitable[httpx.Response]) -> httpx.Response:
    """A hang (Redis stays frozen meanwhile) fails the test rather than stalling it."""
    with anyio.fail_after(NO_HANG_SECONDS):
        return await request


async def answered(request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """The first answer that is not a 503 (Retry-After: 1 asks a client to try again)."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_SECONDS
    while (response := await request()).status_code == 503:
        assert time.monotonic() < deadline, response.text
        await anyio.sleep(0.1)
    return response


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
    form = {"username": "alice", "password": PASSWORD}
    async with running(create_app(settings)) as client:
        response = await answered(lambda: client.post("/auth/token", data=form))
        assert response.status_code == 200, response.text
        pair = response.json()
        token = pair["access_token"]
        refresh = {"refresh_token": pair["refresh_token"]}
        start_fault(redis_server)
        try:
            during = await probe_all(client, token)
            token_routes = [
                await without_hanging(client.post("/auth/token", data=form)),
                await without_hanging(client.post("/auth/refresh", json=refresh)),
            ]
        finally:
            end_fault(redis_server)
        # Back by itself: the pool reconnects and the scripts are loaded again where needed.
        after = {
            "POST /auth/token": await answered(lambda: client.post("/auth/token", data=form)),
            "GET /health/ready": await answered(lambda: client.get("/health/ready")),
            "GET /health/live": await answered(lambda: client.get("/health/live")),
        }
        old_token_after = await answered(lambda: client.get("/me", headers=bearer(token)))
        login_after = await answered(lambda: client.post("/auth/token", data=form))
        assert login_after.status_code == 200, login_after.text
        fresh = login_after.json()["access_token"]
        fresh_after = await answered(lambda: client.get("/me", headers=bearer(fresh)))

    print(f"\n{fault}:")
    for name, (status, seconds, retry_after) in during.items():
        print(f"  {name:<18} {status}  {seconds * 1000:6.0f} ms  Retry-After: {retry_after}")
    for name, (status, _, retry_after) in during.items():
        if name == "GET /health/live":
            assert status == 200, during
        else:
            assert (status, retry_after) == (503, "1"), (name, during)
    for answer in token_routes:  # a token route's 503 is not to be stored either
        assert answer.status_code == 503, answer.text
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Pragma"] == "no-cache"

    assert all(response.status_code == 200 for response in after.values()), after
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
