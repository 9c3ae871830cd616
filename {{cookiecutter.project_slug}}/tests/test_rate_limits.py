"""Rate limits: exact counts, shared across app instances, one Redis command per request."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from {{ cookiecutter.package_name }}.api.security import limited_principal
from {{ cookiecutter.package_name }}.auth.passwords import PasswordChecker
from {{ cookiecutter.package_name }}.auth.tokens import Principal
from {{ cookiecutter.package_name }}.limit_dependencies import limit_by_client
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.rates import Rate
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import delete_keys, keyspace, make_settings, running
from .helpers import PASSWORD, add_user, bearer, login, me
from .redis_monitor import client_commands
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]
# A route with a limit of its own (module level, so FastAPI can resolve the annotation).
Exporter = Annotated[Principal, Depends(limited_principal(Rate(2, 3600), "export"))]


@pytest.fixture
def limited(redis_url: str, key_files: dict[str, Path], tmp_path: Path) -> Iterator[MakeSettings]:
    """Settings with the given limits on the session's Redis; keys are removed afterwards."""
    made: list[Settings] = []

    def build(url: str = redis_url, **values: Any) -> Settings:
        values.setdefault("users_file", tmp_path / "users.json")
        settings = make_settings(url, key_files, **values)
        made.append(settings)
        return settings

    yield build
    for settings in made:
        with contextlib.suppress(RedisConnectionError):  # a test may have stopped its Redis
            delete_keys(settings.redis_url, settings.redis_key_prefix)


async def test_exactly_the_limit_is_allowed_then_429_with_retry_after(
    limited: MakeSettings,
) -> None:
    """5/minute: five requests pass, each saying what remains; the sixth is refused for 12 s."""
    settings = limited(rate_limit="5/minute")
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        token = (await login(client, "alice"))["access_token"]
        remaining = []
        for _ in range(5):
            response = await me(client, token)
            assert response.status_code == 200
            assert response.headers["RateLimit-Policy"] == '"user";q=5;w=60'
            remaining.append(response.headers["RateLimit"].split(";")[1])
        refused = await me(client, token)
    assert remaining == ["r=4", "r=3", "r=2", "r=1", "r=0"]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "12"  # one request's worth: 60 s / 5
    assert refused.headers["RateLimit"] == '"user";r=0;t=12'
    assert refused.json() == {"detail": "Too many requests"}


async def test_each_user_has_a_bucket_of_their_own(limited: MakeSettings) -> None:
    settings = limited(rate_limit="2/minute")
    add_user(settings, "alice")
    add_user(settings, "bob")
    async with running(create_app(settings)) as client:
        alice = (await login(client, "alice"))["access_token"]
        bob = (await login(client, "bob"))["access_token"]
        statuses = [(await me(client, alice)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert (await me(client, bob)).status_code == 200


async def test_a_users_sessions_share_the_users_bucket(limited: MakeSettings) -> None:
    """Logging in again does not buy a fresh allowance: the bucket is per user."""
    settings = limited(rate_limit="2/minute")
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        first = (await login(client, "alice"))["access_token"]
        second = (await login(client, "alice"))["access_token"]
        statuses = [(await me(client, token)).status_code for token in (first, second, first)]
    assert statuses == [200, 200, 429]


async def test_two_app_instances_share_one_limit(limited: MakeSettings) -> None:
    """Two apps on one Redis (as two processes would be) draw from the same bucket."""
    settings = limited(rate_limit="4/minute")
    add_user(settings, "alice")
    async with running(create_app(settings)) as one, running(create_app(settings)) as two:
        token = (await login(one, "alice"))["access_token"]
        statuses = [(await me(client, token)).status_code for client in (one, two) * 3]
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_simultaneous_requests_never_exceed_the_limit(limited: MakeSettings) -> None:
    settings = limited(rate_limit="10/minute", redis_timeout_seconds=5)
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        token = (await login(client, "alice"))["access_token"]
        responses = await asyncio.gather(*(me(client, token) for _ in range(60)))
    assert Counter(response.status_code for response in responses) == {200: 10, 429: 50}


async def test_a_route_can_have_its_own_limit(limited: MakeSettings) -> None:
    """`limited_principal(Rate(...), name)` gives a route its own bucket and header name."""
    settings = limited(rate_limit="100/minute")
    add_user(settings, "alice")
    app = create_app(settings)

    @app.get("/export")
    async def export(principal: Exporter) -> dict[str, str]:
        return {"sub": principal.sub}

    async with running(app) as client:
        token = (await login(client, "alice"))["access_token"]
        exports = [await client.get("/export", headers=bearer(token)) for _ in range(3)]
        after = await me(client, token)
    assert [response.status_code for response in exports] == [200, 200, 429]
    assert exports[0].headers["RateLimit-Policy"] == '"export";q=2;w=3600'
    assert exports[2].headers["Retry-After"] == "1800"
    assert after.status_code == 200
    assert after.headers["RateLimit"].startswith('"user";r=99;')


async def test_successful_limited_responses_carry_the_headers(limited: MakeSettings) -> None:
    settings = limited(rate_limit="100/minute", login_rate_limit="5/minute")
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        response = await client.post(
            "/auth/token", data={"username": "alice", "password": PASSWORD}
        )
        assert response.headers["RateLimit-Policy"] == '"login";q=5;w=60'
        # A success gives its attempt back, and the header says so.
        assert response.headers["RateLimit"] == '"login";r=5;t=0'
        token = response.json()["access_token"]
        logout = await client.post("/auth/logout", headers=bearer(token))
    assert logout.status_code == 204
    assert logout.headers["RateLimit"].startswith('"user";r=99;')


async def wrong_password(
    client: httpx.AsyncClient, username: str, forwarded_for: str | None = None
) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    form = {"username": username, "password": "not the password"}
    return await client.post("/auth/token", data=form, headers=headers)


async def test_login_is_limited_per_client_and_spoofed_forwarded_for_changes_nothing(
    limited: MakeSettings,
) -> None:
    """Without trusted proxies, X-Forwarded-For is ignored: one address, one bucket."""
    settings = limited(login_rate_limit="3/minute")
    async with running(create_app(settings)) as client:
        statuses = [
            (await wrong_password(client, f"user{i}", f"198.51.100.{i}")).status_code
            for i in range(5)
        ]
        refused = await wrong_password(client, "someone-else", "203.0.113.77")
    assert statuses == [401, 401, 401, 429, 429]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "20"


async def test_behind_a_trusted_proxy_forwarded_for_names_the_client(
    limited: MakeSettings,
) -> None:
    """From a trusted proxy, the right-most untrusted hop is the client and gets its own bucket."""
    settings = limited(login_rate_limit="3/minute", trusted_proxies="127.0.0.1/32")
    async with running(create_app(settings)) as client:  # the in-process peer is 127.0.0.1
        distinct = [
            (await wrong_password(client, f"user{i}", f"6.6.6.6, 198.51.100.{i}")).status_code
            for i in range(6)
        ]
        same = [
            (await wrong_password(client, f"other{i}", f"{i}.1.1.1, 203.0.113.9")).status_code
            for i in range(4)
        ]
    assert distinct == [401] * 6
    assert same == [401, 401, 401, 429]


async def test_many_addresses_against_one_account_are_limited_too(limited: MakeSettings) -> None:
    """A botnet guessing one account's password from many addresses meets the account's limit."""
    settings = limited(login_rate_limit="3/minute", trusted_proxies="127.0.0.1/32")
    async with running(create_app(settings)) as client:
        statuses = [
            (await wrong_password(client, "Alice", f"198.51.100.{i}")).status_code for i in range(4)
        ]
        # Case does not open a new bucket.
        other_case = await wrong_password(client, "alice", "198.51.100.200")
    assert statuses == [401, 401, 401, 429]
    assert other_case.status_code == 429


async def test_successful_logins_never_use_up_the_login_budget(limited: MakeSettings) -> None:
    """An office behind one address: at 3/minute, eleven logins from that address in a row
    (four users, one of them eight times) all succeed, and the budget is still whole."""
    settings = limited(login_rate_limit="3/minute")
    names = ["alice", "bob", "carol", "dave"]
    for name in names:
        add_user(settings, name)
    async with running(create_app(settings)) as client:
        form = [{"username": name, "password": PASSWORD} for name in [*names, *["alice"] * 7]]
        responses = [await client.post("/auth/token", data=data) for data in form]
    assert [response.status_code for response in responses] == [200] * 11
    assert responses[-1].headers["RateLimit"] == '"login";r=3;t=0'


async def test_after_successes_exactly_the_limit_of_failures_per_client(
    limited: MakeSettings,
) -> None:
    """A success gives back its own attempt and nothing more: from one address at 3/minute,
    six successes and then successes between failures still leave exactly three failures;
    then that address gets 429 for any account, even with the right password."""
    settings = limited(login_rate_limit="3/minute")
    add_user(settings, "alice")
    add_user(settings, "bob")
    right, wrong = PASSWORD, "not the password"
    attempts = [("alice", right)] * 6 + [
        ("user0", wrong), ("alice", right), ("user1", wrong), ("alice", right), ("user2", wrong),
        ("user3", wrong), ("bob", right),
    ]  # fmt: skip
    async with running(create_app(settings)) as client:
        responses = [
            await client.post("/auth/token", data={"username": name, "password": password})
            for name, password in attempts
        ]
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * 6 + [401, 200, 401, 200, 401, 429, 429]
    assert responses[-1].headers["Retry-After"] == "20"


async def test_after_successes_exactly_the_limit_of_failures_per_account(
    limited: MakeSettings,
) -> None:
    """The account's budget is per account whatever the address: after six successes, three
    failures from three addresses use it up, and the owner is refused from a fourth one."""
    settings = limited(login_rate_limit="3/minute", trusted_proxies="127.0.0.1/32")
    add_user(settings, "alice")
    office = {"X-Forwarded-For": "198.51.100.1"}
    form = {"username": "alice", "password": PASSWORD}
    async with running(create_app(settings)) as client:
        successes = [
            (await client.post("/auth/token", data=form, headers=office)).status_code
            for _ in range(6)
        ]
        failures = [
            (await wrong_password(client, "alice", f"203.0.113.{i}")).status_code for i in range(4)
        ]
        fresh_address = {"X-Forwarded-For": "192.0.2.77"}
        owner = await client.post("/auth/token", data=form, headers=fresh_address)
    assert successes == [200] * 6
    assert failures == [401, 401, 401, 429]
    assert owner.status_code == 429


async def test_a_refused_attempt_never_reaches_the_password_check(
    limited: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is decided before any hashing, also for attempts at the same moment: of ten
    at once at 3/minute, three are checked (and fail), seven are refused unchecked, and the
    right password gets 429 without a check."""
    settings = limited(login_rate_limit="3/minute", redis_timeout_seconds=5)
    add_user(settings, "alice")
    app = create_app(settings)
    checker: PasswordChecker = app_state(app).issuer().password_checker
    check = checker.check
    checked: list[str | None] = []

    async def counting_check(stored_hash: str | None, password: str) -> bool:
        checked.append(stored_hash)
        return await check(stored_hash, password)

    monkeypatch.setattr(checker, "check", counting_check)
    async with running(app) as client:
        responses = await asyncio.gather(*(wrong_password(client, "alice") for _ in range(10)))
        right_password = await client.post(
            "/auth/token", data={"username": "alice", "password": PASSWORD}
        )
    assert Counter(response.status_code for response in responses) == {401: 3, 429: 7}
    assert right_password.status_code == 429
    assert len(checked) == 3


async def test_rate_limit_keys_expire_once_they_stop_limiting(
    limited: MakeSettings, redis: Redis
) -> None:
    """A failed login leaves buckets that expire; a success gives its attempt back, and a bucket
    that it empties is deleted (bob's account); every key left has a TTL within the period."""
    settings = limited(rate_limit="10/minute", login_rate_limit="6/minute")
    add_user(settings, "alice")
    add_user(settings, "bob")
    async with running(create_app(settings)) as client:
        assert (await wrong_password(client, "alice")).status_code == 401
        token = (await login(client, "alice"))["access_token"]
        await login(client, "bob")
        for _ in range(3):
            await me(client, token)
    buckets = [
        key
        for key in redis.scan_iter(match=keyspace(settings).everything(), count=1000)
        if ":rl" in key or "{login}" in key
    ]
    # alice's bucket; the login buckets of the client and of alice's account (one failure each)
    assert len(buckets) == 3, buckets
    for key in buckets:
        ttl_ms = redis.pttl(key)
        assert 0 < ttl_ms <= 60_000, (key, ttl_ms)  # never longer than the period


async def test_an_authenticated_request_costs_exactly_one_redis_command(
    limited: MakeSettings,
) -> None:
    """Counted with MONITOR: one EVALSHA per request, and nothing else (not even a header call)."""
    settings = limited()
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        token = (await login(client, "alice"))["access_token"]
        assert (await me(client, token)).status_code == 200  # connection and script warmed up
        with client_commands(settings.redis_url) as commands:
            for _ in range(20):
                assert (await me(client, token)).status_code == 200
    assert commands == Counter({"EVALSHA": 20})


def app_on(server: RedisServer, limited: MakeSettings, **values: Any) -> FastAPI:
    settings = limited(server.url, **values)
    add_user(settings, "alice")
    return create_app(settings)


def public_app(app: FastAPI) -> FastAPI:
    @app.get("/public", dependencies=[Depends(limit_by_client(Rate(100, 60), "public"))])
    async def public() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.mark.parametrize("fail_open", [False, True])
async def test_without_redis_sessions_fail_closed_whatever_the_limiter_policy(
    redis_server: RedisServer, limited: MakeSettings, fail_open: bool
) -> None:
    """Redis down: authenticated routes and login are 503 either way (no auth without Redis);
    a route limited per client is 503 when failing closed and served when failing open."""
    app = public_app(app_on(redis_server, limited, rate_limit_fail_open=fail_open))
    async with running(app) as client:
        token = (await login(client, "alice"))["access_token"]
        redis_server.stop()
        protected = await me(client, token)
        login_attempt = await client.post(
            "/auth/token", data={"username": "alice", "password": PASSWORD}
        )
        public = await client.get("/public")
    for response in (protected, login_attempt):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    assert public.status_code == (200 if fail_open else 503)
