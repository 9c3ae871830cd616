"""One shared, pipelined Redis connection for the scripts that run on every request.

redis-py takes a pooled connection for each command, writes the command, waits for the reply
under a timeout and returns the connection. That is correct, but it costs about 200 µs of
Python per call, more than verifying the token. Redis answers the commands of one connection
in the order it received them, so concurrent requests can share one connection instead. Each
request queues its command and awaits a future. The commands queued in one turn of the event
loop go out in one write, and hiredis parses the replies as they arrive; they settle the
futures in the same order. Under load a call then costs a few tens of microseconds.

What keeps it correct:

- A command and its place in the queue of waiting replies are added together, with no `await`
  in between, so the queue always matches what was sent. A caller that gives up (its request
  was cancelled) keeps its place: its reply is read and dropped when it arrives, and never
  reaches another caller. That is the failure behind CVE-2023-28858.
- If the oldest waiting command has had no reply for the timeout, or the connection breaks,
  the connection is closed, and every command still waiting on it fails with a `RedisError`
  (a 503); the next call opens a new connection. As with the redis-py client (see
  `redis_clients.py`), a command whose connection broke is sent once more, on a new
  connection: the per-request scripts may run twice (one request then counts twice against
  its limit), and a Redis restart between two requests costs no 503. A timeout is never
  retried.
- A `READONLY` reply means the connection reaches a replica: a primary demoted behind the same
  address (see `failover.py`). The connection is closed as if broken, and its commands, which a
  replica cannot have run, are sent once more on a new connection, to the new primary.
- At most `max_in_flight` commands wait at once. Past that, a call fails at once instead of
  queueing without bound while Redis is stalled.

Only the scripts every request runs come here: `EVALSHA`, and after `NOSCRIPT` (a Redis that
was restarted or flushed) one `EVAL`, which caches the script again. redis-py stays the client
for everything else and for Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .failover import DemotedError

Arg = str | bytes | int

# Error replies become the exceptions redis-py raises for them, so callers treat both alike.
ERRORS_BY_CODE: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "OOM": OutOfMemoryError,
    "READONLY": DemotedError,  # a ReadOnlyError that also closes the connection
    "LOADING": BusyLoadingError,
}


def error_from_reply(message: str) -> RedisError:
    code, _, text = message.partition(" ")
    error_class = ERRORS_BY_CODE.get(code)
    return error_class(text) if error_class else ResponseError(message)


def pack(*args: Arg) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class BrokenConnectionError(RedisConnectionError):
    """The connection closed or went wrong while the command waited for its reply."""


# The connection broke, or reached a replica: `execute` sends the command once more, anew.
SEND_AGAIN_ERRORS = (BrokenConnectionError, DemotedError)


class Connection(asyncio.Protocol):
    """One connection, and the futures of its unanswered commands, oldest first."""

    def __init__(self, timeout: float, max_in_flight: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=error_from_reply)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (future, deadline)
        self._unsent: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting:
                    raise InvalidResponse("a reply to no command")
                waiter, _ = self._waiting.popleft()
                if isinstance(reply, DemotedError):  # whether or not its caller still waits
                    if not waiter.done():
                        waiter.set_exception(reply)
                    self.close(BrokenConnectionError, "the connection reached a replica")
                    return
                if waiter.done():  # its caller gave up: the reply goes nowhere
                    continue
                if isinstance(reply, RedisError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except InvalidResponse as error:
            self.close(BrokenConnectionError, f"Redis sent something unexpected: {error}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(BrokenConnectionError, "the connection to Redis was lost")

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue `command`; the future settles with its reply or fails within the timeout."""
        if not self.open:
            raise BrokenConnectionError("the Redis connection is closed")
        if len(self._waiting) >= self._max_in_flight:
            raise RedisConnectionError("too many Redis commands in flight")
        waiter = self._loop.create_future()
        self._waiting.append((waiter, self._loop.time() + self._timeout))
        if not self._unsent:
            # The connection's callbacks and its connect task run in a context of their own, as
            # the outage watcher does: they serve every request, so none may carry the request
            # that scheduled them (its id, its span) past its end. The watchdog re-arms itself
            # from its own callback, which would otherwise keep the first request's context for
            # the life of the connection.
            self._loop.call_soon(self._flush, context=contextvars.Context())
        self._unsent.append(command)
        if self._watchdog is None:
            self._watch_oldest()
        return waiter

    def _flush(self) -> None:
        """Write the commands queued in this turn of the event loop, in one system call."""
        if self.open and self._transport is not None:
            self._transport.write(b"".join(self._unsent))
        self._unsent.clear()

    def _watch_oldest(self) -> None:
        """Replies come in order, so only the oldest command's deadline needs a timer."""
        self._watchdog = None
        if not self._waiting:
            return
        _, deadline = self._waiting[0]
        if deadline <= self._loop.time():
            self.close(RedisTimeoutError, "Redis did not answer in time")
        else:
            self._watchdog = self._loop.call_at(
                deadline, self._watch_oldest, context=contextvars.Context()
            )

    def close(self, error: type[RedisError], message: str) -> None:
        """Close the connection; every command still waiting fails with `error(message)`, a new
        exception for each, so no two requests share one exception and its traceback."""
        self.open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        self._unsent.clear()
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error(message))


class Script:
    """A Lua script run over a `MultiplexedRedis`; called like redis-py's `AsyncScript`."""

    def __init__(self, redis: MultiplexedRedis, source: str) -> None:
        self._redis = redis
        self._source = source.encode()
        self._sha = hashlib.sha1(self._source, usedforsecurity=False).hexdigest().encode()

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self._redis.execute(pack(b"EVALSHA", self._sha, len(keys), *keys, *args))
        except NoScriptError:  # Redis restarted or flushed its scripts; EVAL caches it again
            return await self._redis.execute(pack(b"EVAL", self._source, len(keys), *keys, *args))


class MultiplexedRedis:
    """A client for one Redis URL over one shared connection, opened on first use and again
    after a failure. Concurrent callers share one connection attempt."""

    def __init__(self, url: str, *, timeout: float, max_in_flight: int) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._address: tuple[str, int] | str = options.get("path") or (
            options.get("host", "localhost"),
            options.get("port", 6379),
        )
        self._tls = tls_context(options) if url.startswith("rediss://") else None
        self._handshake = handshake(options)
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._connection: Connection | None = None
        self._connecting: asyncio.Task[Connection] | None = None
        self._closed = False

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, command: bytes) -> Any:
        """Send one packed command and return its reply; once more if the connection broke or
        reached a replica."""
        try:
            return await self._send(command)
        except SEND_AGAIN_ERRORS:
            return await self._send(command)

    async def _send(self, command: bytes) -> Any:
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect_shared()
        return await connection.send(command)

    async def _connect_shared(self) -> Connection:
        # A caller that is cancelled while waiting does not cancel the attempt for the others.
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), context=contextvars.Context())
            self._connecting.add_done_callback(self._connected)
        attempt = self._connecting
        try:
            return await asyncio.shield(attempt)
        except RedisError as error:  # the attempt's own, which every waiting caller sees
            failure = type(error)(*error.args)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not attempt.cancelled() or (task is not None and task.cancelling()):
                raise  # this caller was cancelled
            failure = RedisConnectionError("the client was closed")  # by aclose(), mid-attempt
        raise failure  # each caller its own exception, as in `Connection.close`

    def _connected(self, attempt: asyncio.Task[Connection]) -> None:
        self._connecting = None
        if attempt.cancelled() or attempt.exception() is not None:
            return
        self._connection = attempt.result()
        if self._closed:  # closed while this attempt was under way
            self._connection.close(RedisConnectionError, "the client was closed")

    async def _connect(self) -> Connection:
        if self._closed:
            raise RedisConnectionError("the client was closed")
        loop = asyncio.get_running_loop()
        connection = Connection(self._timeout, self._max_in_flight)
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(self._address, str):
                    await loop.create_unix_connection(lambda: connection, self._address)
                else:
                    host, port = self._address
                    await loop.create_connection(lambda: connection, host, port, ssl=self._tls)
            for command in self._handshake:  # AUTH, SELECT: answered within the timeout too
                await connection.send(command)
        except TimeoutError as error:
            connection.close(RedisTimeoutError, "connecting to Redis timed out")
            raise RedisTimeoutError("connecting to Redis timed out") from error
        except OSError as error:  # refused, unreachable, TLS handshake failed
            connection.close(RedisConnectionError, "could not connect")
            raise RedisConnectionError(f"could not connect to Redis ({error})") from error
        except BaseException:  # a refused AUTH, or cancelled by aclose()
            connection.close(RedisConnectionError, "could not connect")
            raise
        return connection

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close(RedisConnectionError, "the client was closed")
            self._connection = None


def handshake(options: dict[str, Any]) -> list[bytes]:
    """What a new connection sends first: `AUTH` and `SELECT`, as the URL asks."""
    commands = []
    password, username = options.get("password"), options.get("username")
    if password:
        commands.append(pack("AUTH", username, password) if username else pack("AUTH", password))
    if options.get("db"):
        commands.append(pack("SELECT", options["db"]))
    return commands


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """TLS for `rediss://`, built by redis-py from the URL's `ssl_*` options, so this connection
    checks the server exactly as the redis-py clients do (certificate and host name, unless
    the URL says otherwise)."""
    tls_options = {name: value for name, value in options.items() if name.startswith("ssl_")}
    return SSLConnection(**tls_options).ssl_context.get()
