"""What sessions leave in Redis: a TTL on every key, nothing for dead sessions, bounded indexes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from jose import jwt
from redis import Redis

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, keyspace, make_settings, running
from .helpers import PASSWORD, add_user, assert_invalid_token, bearer, login, me
from .redis_server import RedisServer

pytestmark = pytest.mark.anyio


def keys_of(redis: Redis, settings: Settings) -> list[str]:
    return sorted(redis.scan_iter(match=keyspace(settings).everything(), count=1000))


def session_id(pair: dict[str, Any]) -> str:
    sid: str = jwt.get_unverified_claims(pair["access_token"])["sid"]
    return sid


def session_key(settings: Settings, user: str, sid: str) -> str:
    return keyspace(settings).session(user, sid)


def index_key(settings: Settings, user: str) -> str:
    return keyspace(settings).session_index(user)


async def test_every_key_written_has_a_ttl(
    client: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    """After logins, refreshes, requests and logouts, every key left in Redis expires."""
    add_user(settings, "alice")
    add_user(settings, "bob")
    alice = [await login(client, "alice") for _ in range(3)]
    bob = await login(client, "bob")
    await client.post("/auth/refresh", json={"refresh_token": alice[0]["refresh_token"]})
    await me(client, alice[1]["access_token"])
    assert (
        await client.post("/auth/logout", headers=bearer(alice[2]["access_token"]))
    ).status_code == 204
    assert (
        await client.post("/auth/logout-all", headers=bearer(bob["access_token"]))
    ).status_code == 204

    keys = keys_of(redis, settings)
    assert session_key(settings, "alice", session_id(alice[0])) in keys
    assert index_key(settings, "alice") in keys
    for key in keys:
        # -1 is a key without a TTL; -2 a short-lived bucket that expired after the scan.
        assert redis.pttl(key) != -1, key


def contents(redis: Redis, settings: Settings) -> dict[str, bytes | None]:
    """Every key under the settings' prefix with its serialized value (TTLs left out)."""
    return {key: redis.dump(key) for key in keys_of(redis, settings)}


async def test_a_request_for_a_dead_session_writes_nothing(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, redis: Redis
) -> None:
    """Tokens of an ended session, access or refresh, leave Redis exactly as it was."""
    # Slow limits, so the rate-limit buckets live for minutes and the keyspace holds still.
    settings = make_settings(
        redis_url,
        key_files,
        users_file=tmp_path / "users.json",
        rate_limit="60/hour",
        login_rate_limit="60/hour",
    )
    add_user(settings, "alice")
    try:
        async with running(create_app(settings)) as client:
            pair = await login(client, "alice")
            assert (
                await client.post("/auth/logout", headers=bearer(pair["access_token"]))
            ).status_code == 204
            before = contents(redis, settings)
            assert len(before) == 1  # the user's bucket (the login gave its attempt back)

            assert_invalid_token(await me(client, pair["access_token"]))
            refresh = {"refresh_token": pair["refresh_token"]}
            assert_invalid_token(await client.post("/auth/refresh", json=refresh))

            assert contents(redis, settings) == before
            assert not redis.exists(session_key(settings, "alice", session_id(pair)))
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)


@pytest.fixture
def short_settings(redis_url: str, key_files: dict[str, Path], tmp_path: Path) -> Any:
    """Settings with tiny session lifetimes, for tests that watch sessions expire."""
    made: list[Settings] = []

    def build(**overrides: Any) -> Settings:
        made.append(
            make_settings(redis_url, key_files, users_file=tmp_path / "users.json", **overrides)
        )
        return made[-1]

    yield build
    for settings in made:
        delete_keys(redis_url, settings.redis_key_prefix)


def redis_now_ms(redis: Redis) -> int:
    """Redis's own clock (`TIME`), the one the session scripts read, in milliseconds."""
    seconds, microseconds = redis.time()
    return seconds * 1000 + microseconds // 1000


def expiry_ms(redis: Redis, key: str) -> int:
    """When `key` expires, on Redis's clock (PEXPIRETIME, Redis 7.0+): exact, however long the
    test took to ask, unlike a PTTL compared with a clock read before or after it."""
    expires_at: int = redis.pexpiretime(key)
    assert expires_at >= 0, f"{key}: PEXPIRETIME {expires_at}"  # -2: gone, -1: no TTL
    return expires_at


async def sleep_until(redis: Redis, target_ms: int) -> None:
    """Sleep until Redis's clock reads at least `target_ms`: what a test waiting for a session
    to end waits on, since the server, not the test, decides when that is."""
    while True:
        left_ms = target_ms - redis_now_ms(redis)
        if left_ms <= 0:
            return
        await anyio.sleep(left_ms / 1000)  # asked again after: the two clocks may differ a little


async def test_refresh_cannot_extend_a_session_past_its_absolute_lifetime(
    short_settings: Any, redis: Redis
) -> None:
    """Refreshing keeps a session going only until its absolute lifetime, then it is over."""
    settings = short_settings(session_idle_ttl_seconds=3, session_absolute_ttl_seconds=3)
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        pair = await login(client, "alice")
        key = session_key(settings, "alice", session_id(pair))
        stored = redis.hgetall(key)
        absolute_expiry = int(stored["abs_exp_ms"])
        assert absolute_expiry - int(stored["created_ms"]) == 3000

        # Refresh once Redis's clock is past the login, so the idle TTL alone would reach past
        # the absolute expiry (by at least these 200 ms, and by more on a slow machine).
        await sleep_until(redis, int(stored["created_ms"]) + 200)
        response = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert response.status_code == 200, response.text
        pair = response.json()
        assert expiry_ms(redis, key) <= absolute_expiry
        assert redis.hget(key, "rotations") == "1"

        # Redis counts a key as expired once its clock is past the expiry, not at it.
        await sleep_until(redis, absolute_expiry + 1)
        assert_invalid_token(await me(client, pair["access_token"]))
        response = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert_invalid_token(response)


async def test_requests_slide_the_idle_timeout(short_settings: Any, redis: Redis) -> None:
    """Each request restarts the idle clock; a session left alone for longer ends."""
    settings = short_settings(session_idle_ttl_seconds=3, session_absolute_ttl_seconds=60)
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        pair = await login(client, "alice")
        key = session_key(settings, "alice", session_id(pair))
        expiry_at_login = expiry_ms(redis, key)
        await sleep_until(redis, expiry_at_login - 2800)  # 200 ms after the login, on Redis's clock
        before_request = redis_now_ms(redis)
        assert (await me(client, pair["access_token"])).status_code == 200
        # Slid: the idle TTL counts from the request, which came after `before_request`.
        slid_expiry = expiry_ms(redis, key)
        assert slid_expiry >= before_request + 3000 > expiry_at_login
        await sleep_until(redis, slid_expiry + 1)
        assert_invalid_token(await me(client, pair["access_token"]))


async def test_the_session_index_is_capped_and_pruned(short_settings: Any, redis: Redis) -> None:
    """Past the per-user cap the oldest sessions end; ended sessions leave the index at login."""
    settings = short_settings(max_sessions_per_user=3)
    add_user(settings, "alice")
    index = index_key(settings, "alice")
    async with running(create_app(settings)) as client:
        pairs = [await login(client, "alice") for _ in range(5)]
        sids = [session_id(pair) for pair in pairs]
        assert sorted(redis.zrange(index, 0, -1)) == sorted(sids[2:])
        for pair in pairs[:2]:
            assert_invalid_token(await me(client, pair["access_token"]))
        for pair in pairs[2:]:
            assert (await me(client, pair["access_token"])).status_code == 200
        assert 0 < redis.pttl(index) <= settings.session_absolute_ttl_seconds * 1000

        # A session that ended on its own (as an idle timeout does) is pruned, not counted:
        # the newest one ends here, so the cap alone would wrongly end the oldest live one.
        redis.delete(session_key(settings, "alice", sids[4]))
        newest = await login(client, "alice")
        assert sorted(redis.zrange(index, 0, -1)) == sorted([sids[2], sids[3], session_id(newest)])
        for pair in [pairs[2], pairs[3], newest]:
            assert (await me(client, pair["access_token"])).status_code == 200


async def test_logout_all_leaves_no_keys_of_the_user(
    client: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    """Logging out everywhere removes the user's sessions and their index. What may remain is
    the user's rate-limit bucket (the logout-all request itself took from it), with a TTL."""
    add_user(settings, "alice")
    pairs = [await login(client, "alice") for _ in range(3)]
    assert (
        await client.post("/auth/logout-all", headers=bearer(pairs[0]["access_token"]))
    ).status_code == 204
    left = list(redis.scan_iter(match=keyspace(settings).tagged("alice")))
    assert [key for key in left if key != keyspace(settings).user_bucket("alice")] == []
    for key in left:
        assert redis.pttl(key) != -1, key  # -2 is fine: it expired after the scan


async def test_scripts_reload_after_a_script_flush(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """`NOSCRIPT` (scripts dropped, e.g. a Redis restart) is handled: requests still work.
    On a private Redis: SCRIPT FLUSH empties the script cache of the whole server."""
    settings = make_settings(redis_server.url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    with Redis.from_url(redis_server.url) as redis:
        async with running(create_app(settings)) as client:
            pair = await login(client, "alice")
            redis.script_flush()
            assert (await me(client, pair["access_token"])).status_code == 200
            redis.script_flush()
            refresh = {"refresh_token": pair["refresh_token"]}
            assert (await client.post("/auth/refresh", json=refresh)).status_code == 200
            redis.script_flush()
            await login(client, "alice")


async def test_redis_outage_is_503_and_a_restart_ends_sessions(
    redis_server: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Redis down: 503, never 500. Back empty: old sessions are 401 and login works again."""
    settings = make_settings(redis_server.url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        pair = await login(client, "alice")
        redis_server.stop()
        for response in [
            await me(client, pair["access_token"]),
            await client.post("/auth/token", data={"username": "alice", "password": PASSWORD}),
            await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}),
        ]:
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
        redis_server.start()
        assert_invalid_token(await me(client, pair["access_token"]))
        pair = await login(client, "alice")
        assert (await me(client, pair["access_token"])).status_code == 200
