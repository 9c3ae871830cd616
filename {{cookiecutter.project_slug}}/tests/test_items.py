"""The example router: scopes, a limit of its own, and bounded per-user data in Redis."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis import Redis

from {{ cookiecutter.package_name }}.api.items import WRITE_RATE
from {{ cookiecutter.package_name }}.item_store import ITEMS_TTL_SECONDS, MAX_ITEMS
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import delete_keys, keyspace, make_settings, running
from .helpers import add_user, bearer, login
from .redis_monitor import client_commands

pytestmark = pytest.mark.anyio


async def token_of(client: httpx.AsyncClient, settings: Settings, name: str, *scopes: str) -> str:
    add_user(settings, name, scopes=scopes)
    token: str = (await login(client, name))["access_token"]
    return token


async def add(client: httpx.AsyncClient, token: str, text: str) -> httpx.Response:
    return await client.post("/items", json={"text": text}, headers=bearer(token))


async def test_reading_needs_read_and_adding_needs_write(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    nothing = await token_of(client, settings, "nobody")
    reader = await token_of(client, settings, "reader", "read")
    for response in (await client.get("/items"), await client.post("/items", json={"text": "a"})):
        assert response.status_code == 401
    refused = [
        (await client.get("/items", headers=bearer(nothing)), "read"),
        (await add(client, reader, "a"), "write"),
    ]
    for response, scope in refused:
        assert response.status_code == 403
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer error="insufficient_scope", scope="{scope}"'
        )
    assert (await client.get("/items", headers=bearer(reader))).json() == {"items": []}


async def test_a_405_allows_every_method_the_path_serves(client: httpx.AsyncClient) -> None:
    """GET and POST /items are two routes: a method neither serves is told both (Starlette named
    only the first route's)."""
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        response = await client.request(method, "/items")
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET, POST", method


async def test_each_user_reads_their_own_items_newest_first(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = await token_of(client, settings, "alice", "read", "write")
    bob = await token_of(client, settings, "bob", "read", "write")
    for text in ("first", "second"):
        response = await add(client, alice, text)
        assert (response.status_code, response.json()) == (201, {"text": text})
    listed = await client.get("/items", headers=bearer(alice))
    assert listed.json() == {"items": [{"text": "second"}, {"text": "first"}]}
    assert (await client.get("/items", headers=bearer(bob))).json() == {"items": []}


async def test_adding_has_a_limit_of_its_own(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """10 additions a minute per user, from a bucket of their own: the 11th gets 429, while
    reading (the user's bucket, APP_RATE_LIMIT) and other users' additions go on."""
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", rate_limit="100/minute"
    )
    try:
        async with running(create_app(settings)) as client:
            alice = await token_of(client, settings, "alice", "read", "write")
            bob = await token_of(client, settings, "bob", "read", "write")
            added = [await add(client, alice, f"item {n}") for n in range(WRITE_RATE.limit)]
            refused = await add(client, alice, "one too many")
            read = await client.get("/items", headers=bearer(alice))
            other = await add(client, bob, "bob's")
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)
    assert [response.status_code for response in added] == [201] * WRITE_RATE.limit
    assert added[0].headers["RateLimit-Policy"] == '"items-write";q=10;w=60'
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "6"  # one addition's worth: 60 s / 10
    assert read.status_code == 200
    assert read.headers["RateLimit"].startswith('"user";r=99;')  # additions took none of it
    assert len(read.json()["items"]) == WRITE_RATE.limit
    assert other.status_code == 201


async def test_a_users_items_are_bounded_and_expire(
    client: httpx.AsyncClient, settings: Settings, app: FastAPI, redis: Redis
) -> None:
    """However many are added, a user keeps the newest `MAX_ITEMS`, in one key with a TTL."""
    alice = await token_of(client, settings, "alice", "read")
    store = app_state(app).stores.items
    for number in range(MAX_ITEMS + 5):
        await store.add("alice", f"item {number}")
    listed = (await client.get("/items", headers=bearer(alice))).json()["items"]
    assert len(listed) == MAX_ITEMS
    assert listed[0] == {"text": f"item {MAX_ITEMS + 4}"}
    assert listed[-1] == {"text": "item 5"}
    key = keyspace(settings).items("alice")
    assert redis.llen(key) == MAX_ITEMS
    assert 0 < redis.pttl(key) <= ITEMS_TTL_SECONDS * 1000


async def test_the_session_check_and_the_limit_stay_one_redis_call(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Counted with MONITOR: a scoped route with its own limit costs the one EVALSHA of any
    authenticated request; the route's own work is one more call."""
    alice = await token_of(client, settings, "alice", "read", "write")
    assert (await add(client, alice, "warm-up")).status_code == 201
    assert (await client.get("/items", headers=bearer(alice))).status_code == 200
    with client_commands(settings.redis_url) as adding:
        assert (await add(client, alice, "counted")).status_code == 201
    with client_commands(settings.redis_url) as reading:
        assert (await client.get("/items", headers=bearer(alice))).status_code == 200
    assert adding == Counter({"EVALSHA": 2})  # session and limit; then the addition
    assert reading == Counter({"EVALSHA": 1, "LRANGE": 1})
