"""The shared per-request connection (`multiplex.py`), against a real redis-server.

Replies reach their own callers however many wait at once and whoever gives up; a stalled,
dropped or flushed Redis fails calls promptly or recovers by itself; the URL's password,
database, TLS and Unix socket are honoured.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from redis import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.multiplex import MultiplexedRedis, Script
from {{ cookiecutter.package_name }}.redis_clients import close_redis, create_redis

from .conftest import make_settings, running
from .helpers import add_user, bearer, login
from .redis_server import RedisServer
from .tls import write_tls_files

pytestmark = pytest.mark.anyio

ECHO = "return ARGV[1]"
HANG_GUARD_SECONDS = 10  # only so that a broken client fails the test instead of hanging it


@asynccontextmanager
async def multiplexed(
    url: str, timeout_seconds: float = 5, max_in_flight: int = 10_000
) -> AsyncIterator[MultiplexedRedis]:
    client = MultiplexedRedis(url, timeout=timeout_seconds, max_in_flight=max_in_flight)
    try:
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            yield client
    finally:
        await client.aclose()


@contextmanager
def started(server: RedisServer) -> Iterator[RedisServer]:
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stopped with SIGSTOP: commands are accepted by the kernel, and nothing answers."""
    server.pause()
    try:
        yield
    finally:
        server.resume()


def tags(count: int) -> list[str]:
    return [secrets.token_hex(8) for _ in range(count)]


async def echo(script: Script, text: str) -> bytes:
    reply: bytes = await script(keys=[], args=[text])
    return reply


async def connected_echo(client: MultiplexedRedis) -> Script:
    """The echo script, after a first call has opened the shared connection."""
    script = client.register_script(ECHO)
    assert await echo(script, "connected") == b"connected"
    return script


def assert_distinct(errors: Sequence[object]) -> None:
    """Each caller has an exception of its own: a shared one would carry one request's
    traceback, and with it its frames, into another."""
    assert len({id(error) for error in errors}) == len(errors)


def connections_received(url: str) -> int:
    with Redis.from_url(url) as redis:
        return int(redis.info("stats")["total_connections_received"])


async def test_many_concurrent_callers_share_one_connection_and_each_gets_its_own_reply(
    redis_server: RedisServer,
) -> None:
    before = connections_received(redis_server.url)
    async with multiplexed(redis_server.url) as client:
        script = client.register_script(ECHO)
        sent = tags(2000)
        replies = await asyncio.gather(*(echo(script, tag) for tag in sent))
    assert replies == [tag.encode() for tag in sent]
    # Our counting connection is the other one.
    assert connections_received(redis_server.url) - before == 2


async def test_a_caller_that_gives_up_never_receives_or_shifts_a_reply(
    redis_server: RedisServer,
) -> None:
    """Callers cancelled while their commands wait on a frozen Redis keep their places in the
    queue; when Redis thaws, every other caller still gets exactly its own reply."""
    async with multiplexed(redis_server.url) as client:
        script = await connected_echo(client)
        for _ in range(3):
            with frozen(redis_server):
                calls = {tag: asyncio.ensure_future(echo(script, tag)) for tag in tags(200)}
                await asyncio.sleep(0.02)  # the commands are written; no reply can come
                given_up = set(random.sample(sorted(calls), 100))
                for tag in given_up:
                    calls[tag].cancel()
            for tag, call in calls.items():
                if tag in given_up:
                    with pytest.raises(asyncio.CancelledError):
                        await call
                else:
                    assert await call == tag.encode()
            assert await echo(script, "next") == b"next"


# Stands for what a request keeps in its context: its id, its span.
REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("REQUEST_STATE")


class RequestState:
    pass


async def state_after(call: Callable[[], Awaitable[object]]) -> weakref.ref[RequestState]:
    """Run `call` in a task of its own whose context holds a `RequestState`, as a request's does;
    a weak reference to that state once the task is over and the garbage collected."""

    async def request() -> weakref.ref[RequestState]:
        state = RequestState()
        REQUEST_STATE.set(state)
        await call()
        return weakref.ref(state)

    state = await asyncio.create_task(request())
    await asyncio.sleep(0)  # the callback that woke this test holds the finished task
    gc.collect()
    return state


async def test_the_shared_connection_keeps_nothing_of_the_request_that_opened_it(
    redis_server: RedisServer,
) -> None:
    """The first caller opens the connection and arms its timer; both serve every later caller.
    Callbacks and tasks copy the context they are made in: made in the caller's, the socket's
    read callback would keep its state (a span and everything it points to) alive for as long
    as the connection, and the timer until it fires."""
    async with multiplexed(redis_server.url) as client:
        script = client.register_script(ECHO)
        state = await state_after(lambda: echo(script, "first"))
        assert state() is None, "the connection keeps the first request's context"
        assert await echo(script, "still open") == b"still open"


async def test_a_pooled_connection_keeps_nothing_of_the_request_that_opened_it(
    redis_server: RedisServer, key_files: dict[str, Path]
) -> None:
    """The pool's connections (logins, refreshes, readiness) are opened by whichever request
    first finds none free, and then serve others for as long as they stay open."""
    redis = create_redis(make_settings(redis_server.url, key_files))
    try:
        opened: list[int] = []

        async def request() -> None:
            opened.append(await redis.client_id())

        state = await state_after(request)
        assert state() is None, "the pooled connection keeps the first request's context"
        assert await redis.client_id() == opened[0]  # the same connection, still open
    finally:
        await close_redis(redis)


async def test_a_caller_cancelled_as_its_pooled_connection_opens_leaves_it_closed(
    redis_server: RedisServer, key_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout can cancel the caller in the very turn the socket opened, before redis-py's
    handshake ran (AUTH, SELECT, the reply parser). A connection so left must be closed, not
    go back to the pool, where every later call on it would fail with an AttributeError."""
    open_socket = Connection._connect
    callers: list[asyncio.Task[bool]] = []

    async def open_then_cancel_the_caller(self: Connection) -> None:
        await open_socket(self)  # type: ignore[no-untyped-call]
        if callers:
            asyncio.get_running_loop().call_soon(callers.pop().cancel)

    monkeypatch.setattr(Connection, "_connect", open_then_cancel_the_caller)
    redis = create_redis(make_settings(redis_server.url, key_files, redis_max_connections=1))

    async def ping() -> bool:
        return bool(await redis.ping())

    try:
        caller = asyncio.create_task(ping())
        callers.append(caller)
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await redis.ping()  # on a new connection
    finally:
        await close_redis(redis)


async def test_a_stalled_redis_fails_calls_with_a_timeout_and_the_next_call_recovers(
    redis_server: RedisServer,
) -> None:
    async with multiplexed(redis_server.url, timeout_seconds=0.25) as client:
        script = await connected_echo(client)
        with frozen(redis_server):
            results = await asyncio.gather(
                *(echo(script, tag) for tag in tags(20)), return_exceptions=True
            )
        assert all(isinstance(result, RedisTimeoutError) for result in results), results
        assert_distinct(results)
        # The late replies went to the closed connection; a new one answers for itself.
        assert await echo(script, "after") == b"after"


async def test_past_max_in_flight_a_call_fails_at_once_instead_of_queueing(
    redis_server: RedisServer,
) -> None:
    async with multiplexed(redis_server.url, max_in_flight=3) as client:
        script = await connected_echo(client)
        with frozen(redis_server):
            waiting = [asyncio.ensure_future(echo(script, str(n))) for n in range(3)]
            await asyncio.sleep(0)  # all three are queued
            with pytest.raises(RedisConnectionError, match="in flight"):
                await echo(script, "one too many")
        assert await asyncio.gather(*waiting) == [b"0", b"1", b"2"]


async def test_a_dropped_connection_is_replaced_and_the_call_sent_again(
    redis_server: RedisServer,
) -> None:
    async with multiplexed(redis_server.url) as client:
        script = await connected_echo(client)
        with Redis.from_url(redis_server.url) as redis:
            assert redis.client_kill_filter(_type="normal", skipme=True) == 1
        # The event loop has not seen the connection close yet: this call is written to the
        # dead connection, fails there, and is sent once more on a new one.
        assert await echo(script, "after the kill") == b"after the kill"


async def test_a_stopped_redis_fails_every_waiting_caller_and_a_restarted_one_serves_again(
    redis_server: RedisServer,
) -> None:
    async with multiplexed(redis_server.url) as client:
        script = await connected_echo(client)
        redis_server.stop()
        results = await asyncio.gather(
            *(echo(script, tag) for tag in tags(50)), return_exceptions=True
        )
        assert all(isinstance(result, RedisConnectionError) for result in results), results
        assert_distinct(results)
        redis_server.start()
        assert await echo(script, "back") == b"back"


async def test_after_script_flush_the_script_is_loaded_again_once(
    redis_server: RedisServer,
) -> None:
    with Redis.from_url(redis_server.url) as redis:
        async with multiplexed(redis_server.url) as client:
            script = client.register_script(ECHO)
            assert await echo(script, "first") == b"first"  # EVALSHA fails, EVAL loads it
            redis.script_flush()
            assert await echo(script, "flushed") == b"flushed"  # again
            assert await echo(script, "cached") == b"cached"  # EVALSHA succeeds
        stats = redis.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 2
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert stats["cmdstat_evalsha"]["failed_calls"] == 2


async def test_an_error_reply_raises_for_its_caller_only(redis_url: str) -> None:
    async with multiplexed(redis_url) as client:
        failing = client.register_script("return redis.error_reply('BOOM no good')")
        script = client.register_script(ECHO)
        results = await asyncio.gather(
            echo(script, "a"), failing(keys=[], args=[]), echo(script, "b"), return_exceptions=True
        )
    assert results[0] == b"a"
    assert isinstance(results[1], ResponseError)
    assert "BOOM no good" in str(results[1])
    assert results[2] == b"b"


async def test_password_and_database_come_from_the_url() -> None:
    password = secrets.token_urlsafe(16)
    with started(RedisServer(password=password)) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/3"
        key = f"test-multiplex-{secrets.token_hex(4)}"
        async with multiplexed(url) as client:
            script = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
            assert await script(keys=[key], args=["in three"]) == b"OK"
        with Redis.from_url(url) as database_3:
            assert database_3.get(key) == b"in three"
        with Redis.from_url(url.replace("/3", "/0")) as database_0:
            assert database_0.get(key) is None
        wrong = f"redis://:not-{password}@127.0.0.1:{server.port}/0"
        async with multiplexed(wrong) as client:
            with pytest.raises(AuthenticationError):
                await echo(client.register_script(ECHO), "refused")


async def test_tls_checks_the_server_certificate_and_its_name(tmp_path: Path) -> None:
    files = write_tls_files(tmp_path / "server")
    stranger = write_tls_files(tmp_path / "stranger")
    with started(RedisServer(tls=files)) as server:
        async with multiplexed(server.url) as client:
            assert await echo(client.register_script(ECHO), "private") == b"private"
        untrusted = server.url.replace(str(files.ca_certificate), str(stranger.ca_certificate))
        async with multiplexed(untrusted) as client:
            with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await echo(client.register_script(ECHO), "refused")
    misnamed = write_tls_files(tmp_path / "misnamed", host="127.0.0.2")  # we dial 127.0.0.1
    with started(RedisServer(tls=misnamed)) as server:
        async with multiplexed(server.url) as client:
            with pytest.raises(RedisConnectionError, match="mismatch"):
                await echo(client.register_script(ECHO), "refused")


@pytest.mark.parametrize("transport", ["tls", "unix socket"])
async def test_the_service_works_over_tls_and_unix_sockets(
    transport: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Both clients (redis-py for logins, the shared connection for requests) follow the URL."""
    tls = write_tls_files(tmp_path) if transport == "tls" else None
    with started(RedisServer(tls=tls, unix_socket=tls is None)) as server:
        url = server.url if tls else server.unix_url
        settings = make_settings(url, key_files, users_file=tmp_path / "users.json")
        add_user(settings, "alice")
        async with running(create_app(settings)) as client:
            token = (await login(client, "alice"))["access_token"]
            response = await client.get("/me", headers=bearer(token))
            assert response.status_code == 200, response.text
            assert (await client.get("/health/ready")).status_code == 200
            assert (await client.post("/auth/logout", headers=bearer(token))).status_code == 204
            response = await client.get("/me", headers=bearer(token))
            assert response.status_code == 401


async def test_closing_the_client_fails_waiting_callers_instead_of_leaving_them(
    redis_server: RedisServer,
) -> None:
    client = MultiplexedRedis(redis_server.url, timeout=3 * HANG_GUARD_SECONDS, max_in_flight=9)
    script = await connected_echo(client)
    with frozen(redis_server):
        waiting = asyncio.ensure_future(echo(script, "never answered"))
        await asyncio.sleep(0)
        await client.aclose()
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            with pytest.raises(RedisConnectionError, match="closed"):
                await waiting


async def test_closing_the_client_while_it_connects_fails_callers_with_a_redis_error() -> None:
    """A caller waiting for the shared connection attempt gets a `RedisError` (a 503), not the
    attempt's cancellation (which would be a 500)."""
    password = secrets.token_urlsafe(16)
    with started(RedisServer(password=password)) as server, frozen(server):
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"  # AUTH waits on the frozen server
        client = MultiplexedRedis(url, timeout=3 * HANG_GUARD_SECONDS, max_in_flight=9)
        waiting = asyncio.ensure_future(echo(client.register_script(ECHO), "never answered"))
        await asyncio.sleep(0.05)  # connected; AUTH sent, unanswered
        await client.aclose()
        async with asyncio.timeout(HANG_GUARD_SECONDS):
            with pytest.raises(RedisConnectionError, match="closed"):
                await waiting


def test_a_bad_tls_option_in_the_url_stops_startup() -> None:
    with pytest.raises(RedisError, match="sometimes"):
        MultiplexedRedis(
            "rediss://127.0.0.1:6379/0?ssl_cert_reqs=sometimes", timeout=1, max_in_flight=1
        )
