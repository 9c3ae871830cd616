"""A request cancelled while its Redis call is in flight never leaves a connection one reply behind.

If a cancelled command's connection went back to the pool with its reply still unread (redis-py
before 4.5.4, CVE-2023-28858/28859), the next request on it would read that stale reply instead
of its own. Replies here are made to differ, so a shifted one shows: a revoked session answers
401 and a live one 200, a refresh returns the scopes stored with that user's session (each user
has their own scope), and a refresh given a session-check reply fails outright.

Calls are held in flight by freezing Redis (SIGSTOP): the commands are written, no reply comes,
and the requests waiting for them are cancelled; then Redis thaws and sends every reply.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import make_settings, running
from .helpers import add_user, me
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

ROUNDS = 12
VICTIMS_PER_ROUND = 24  # more than the pool's connections, so every connection is hit
POOL = 8
IN_FLIGHT_SECONDS = 0.02  # time for the victims' commands to reach the (frozen) server


@pytest.fixture
async def frozen_app(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        redis_server.url,
        key_files,
        users_file=tmp_path / "users.json",
        redis_max_connections=POOL,
        redis_timeout_seconds=5,  # longer than any freeze here: nothing times out
        rate_limit="100000/hour",
    )
    app = create_app(settings)
    async with running(app) as client:
        yield app, client


class Users:
    """Live users (with a refresh token each), users whose session was revoked, and victims."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.access: dict[str, str] = {}
        self.refresh: dict[str, str] = {}

    async def open(self, name: str) -> None:
        """A real user (refresh looks users up) with one session and its tokens."""
        state = app_state(self.app)
        add_user(state.settings, name, scopes=[scope_of(name)])
        session = await state.stores.sessions.create(name, frozenset({scope_of(name)}))
        self.access[name] = (
            state.issuer().token_issuer.issue(name, session.sid, session.scopes).token
        )
        self.refresh[name] = session.refresh_token


def scope_of(name: str) -> str:
    return f"scope-of-{name}"


async def check_live(client: httpx.AsyncClient, users: Users, name: str) -> None:
    response = await me(client, users.access[name])
    assert response.status_code == 200, (name, response.status_code, response.text)
    assert response.json() == {"sub": name, "scopes": [scope_of(name)]}


async def check_revoked(client: httpx.AsyncClient, users: Users, name: str) -> None:
    response = await me(client, users.access[name])
    assert response.status_code == 401, (name, response.status_code, response.text)


async def check_refresh(client: httpx.AsyncClient, users: Users, name: str) -> None:
    """The new token's scopes come from Redis's reply: another user's reply shows here."""
    response = await client.post("/auth/refresh", json={"refresh_token": users.refresh[name]})
    assert response.status_code == 200, (name, response.status_code, response.text)
    pair = response.json()
    users.refresh[name] = pair["refresh_token"]
    users.access[name] = pair["access_token"]
    await check_live(client, users, name)


async def check_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/ready")).status_code == 200


async def test_cancelled_requests_never_shift_replies_onto_other_requests(
    frozen_app: tuple[FastAPI, httpx.AsyncClient], redis_server: RedisServer
) -> None:
    app, client = frozen_app
    rng = random.Random(6)  # reproducible interleavings  # noqa: S311 (not for security)
    users = Users(app)
    live = [f"live-{number}" for number in range(8)]
    revoked = [f"revoked-{number}" for number in range(8)]
    refreshing = [f"refreshing-{number}" for number in range(8)]
    victims = [f"victim-{number}" for number in range(8)]
    for name in live + revoked + refreshing + victims:
        await users.open(name)
    for name in revoked:
        await app_state(app).stores.sessions.revoke_all(name)

    cancelled = 0
    for round_number in range(ROUNDS):
        frozen = round_number % 2 == 0  # odd rounds: cancel at random points, Redis running
        if frozen:
            redis_server.pause()
        try:
            victim_tasks = [
                asyncio.create_task(me(client, users.access[rng.choice(victims)]))
                for _ in range(VICTIMS_PER_ROUND)
            ]
            if frozen:
                await asyncio.sleep(IN_FLIGHT_SECONDS)
                for task in victim_tasks:
                    task.cancel()
            else:
                for task in victim_tasks:
                    for _ in range(rng.randrange(8)):  # a random number of event-loop steps
                        await asyncio.sleep(0)
                    task.cancel()
            checks = [
                *(check_live(client, users, name) for name in live),
                *(check_revoked(client, users, name) for name in revoked),
                *(check_refresh(client, users, name) for name in refreshing),
                check_ready(client),
            ]
            rng.shuffle(checks)
            normal = asyncio.gather(*checks)
            await asyncio.sleep(IN_FLIGHT_SECONDS)
        finally:
            if frozen:
                redis_server.resume()
        await normal
        for result in await asyncio.gather(*victim_tasks, return_exceptions=True):
            if isinstance(result, asyncio.CancelledError):
                cancelled += 1
            else:  # finished before its cancellation took effect: still its own answer
                assert isinstance(result, httpx.Response), repr(result)
                assert result.status_code == 200, result.text
                assert result.json()["sub"] in victims

    # Most victims of the frozen rounds were cancelled with their command sent, unanswered.
    assert cancelled >= ROUNDS // 2 * VICTIMS_PER_ROUND // 2
    # Afterwards, one request at a time, each on whatever pooled connection comes next.
    for name in live + refreshing:
        await check_live(client, users, name)
    for name in revoked:
        await check_revoked(client, users, name)
