"""The Redis clients, opened in the app's lifespan, never at import time: per process, a bounded
redis-py pool for logins, refreshes, logouts and readiness, and one shared, pipelined connection
(`multiplex.py`) for the scripts every request runs.

Every timeout is explicit. redis-py's defaults (5 s socket timeouts, several retries with backoff)
would make a request wait many seconds on a stalled Redis; here a call either answers within
`APP_REDIS_TIMEOUT_SECONDS` or fails, and the app turns the failure into a 503.

`APP_REDIS_CLUSTER=true` selects the Redis Cluster client; `APP_REDIS_URL` then names any one
node and the client discovers the rest. Every script touches the keys of one `{hash tag}` only,
so each call goes to the one node that owns that slot. For failover without a cluster, point
`APP_REDIS_URL` at a managed Redis endpoint that follows its primary (see the README).

What each client does when a primary fails over is in `failover.py`: a connection answered
`READONLY` is dropped and the command sent once more on a new one; on a cluster, a write to a
connection closed under it is a `ConnectionError`, never an `AttributeError` or `RuntimeError`.
Every connection of either client opens in a context of its own (`FreshContext`), so none keeps
the request that happened to open it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.typing import EncodableT

from .failover import CheckWriter, DemotedError, DropOnReadOnly, with_mixin
from .multiplex import MultiplexedRedis
from .settings import Settings

# What the rest of the service holds: either client offers the calls it makes
# (`register_script`, `ping`, `aclose`) with the same meaning.
RedisClient = Redis | RedisCluster

HEALTH_CHECK_INTERVAL_SECONDS = 30  # PING an idle pooled connection before reusing it
# Per-request commands waiting on the shared connection at once; past this (a stalled Redis
# under load) a request gets 503 at once. A healthy Redis keeps this near the number of
# requests in progress.
MAX_IN_FLIGHT = 1024
# What a PING to a Redis that is down, frozen, refusing or mid-failover raises.
PING_ERRORS = (RedisError, OSError, TimeoutError)


class FreshContext(AbstractConnection):
    """A redis-py connection that opens its socket in an empty context (mixed in before a
    redis-py connection class).

    asyncio runs every callback in the context it was made in, and the socket's read callback
    is made while connecting, then lives as long as the connection. Opened from a request's
    task, it would keep that request's context (its request id, its span and what the span
    holds) reachable from the event loop until the connection closes: the pool's first
    requests, for as long as the process runs. `multiplex.py` opens its connection the same way.
    """

    async def _connect(self) -> None:
        # Cancelling the caller (a timeout) cancels the task it waits for. redis-py declares
        # `_connect` abstract and untyped here; the class this is mixed before defines it.
        connect = super()._connect()  # type: ignore[no-untyped-call, safe-super]
        connecting = asyncio.create_task(connect, context=contextvars.Context())
        try:
            await connecting
        except asyncio.CancelledError:
            # Cancelled in the turn the socket opened: redis-py would skip the handshake (AUTH,
            # SELECT, the reply parser) yet keep the socket, and the pool would hand it out.
            if connecting.done() and not connecting.cancelled() and not connecting.exception():
                await self.disconnect(nowait=True)
            raise


def connection_class(mixin: type[Any], base: type[Any]) -> type[Any]:
    """`base` (TCP, TLS or a Unix socket, as the URL says) with `mixin` and `FreshContext`."""
    return with_mixin(FreshContext, with_mixin(mixin, base))


def create_redis(settings: Settings) -> RedisClient:
    """A client over a bounded pool; callers wait at most the timeout for a free connection.

    With `APP_REDIS_CLUSTER` the client is a `ClusterClient`.
    """
    if settings.redis_cluster:
        return create_cluster_client(settings)
    timeout = settings.redis_timeout_seconds
    options: dict[str, Any] = dict(parse_url(settings.redis_url))  # as `from_url` reads it
    # TCP, TLS or a Unix socket, as the URL says, closing itself on a READONLY reply.
    options["connection_class"] = connection_class(
        DropOnReadOnly, options.get("connection_class", Connection)
    )
    pool = BlockingConnectionPool(
        **options,
        max_connections=settings.redis_max_connections,
        timeout=timeout,  # waiting for a free connection
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        # One immediate retry on a broken connection (e.g. after a Redis restart) or one that
        # reached a demoted primary (READONLY: nothing was written); a timeout is not retried,
        # so a stalled Redis costs one timeout, not several.
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError, DemotedError)),
    )
    return Redis(connection_pool=pool)


class ClusterClient(RedisCluster):
    """`RedisCluster` with a bounded, waiting pool.

    RedisCluster keeps a pool per node of at most `max_connections` and raises at once when one
    is exhausted; it has no blocking pool. So commands here first take one of
    `max_connections` permits, waiting at most the timeout, as `BlockingConnectionPool` does:
    a burst queues briefly instead of failing, and no node ever sees more than
    `max_connections` connections from this process for commands and scripts.
    """

    def __init__(self, *args: Any, wait_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(kwargs["max_connections"])
        self._wait_timeout = wait_timeout
        self._check_writers()

    def _check_writers(self) -> None:
        """Make every node's connections `CheckWriter`s (see `failover.py`), opened in a
        context of their own (`FreshContext`).

        RedisCluster takes no connection class: it picks TCP or TLS itself and hands it to each
        node, through the keyword arguments it shares with its node manager (for the nodes it
        discovers) and to the nodes it was given at start (none has a connection yet). Both
        are changed here, before any connection is made; if a redis-py release moves them, the
        client refuses to start rather than run without the check.
        """
        shared = self.nodes_manager.connection_kwargs
        if shared is not self.connection_kwargs or "connection_class" not in shared:
            raise TypeError("redis-py's cluster client no longer shares its connection class")
        shared["connection_class"] = connection_class(CheckWriter, shared["connection_class"])
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = shared["connection_class"]

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with asyncio.timeout(self._wait_timeout):
            await self._permits.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._permits.release()


def create_per_request_client(settings: Settings) -> MultiplexedRedis | None:
    """The one shared connection for the scripts every request runs (see `multiplex`), or None
    on Redis Cluster, where the cluster client runs them too."""
    if settings.redis_cluster:
        return None
    return MultiplexedRedis(
        settings.redis_url,
        timeout=settings.redis_timeout_seconds,
        max_in_flight=MAX_IN_FLIGHT,
    )


def create_cluster_client(settings: Settings) -> ClusterClient:
    timeout = settings.redis_timeout_seconds
    client = ClusterClient.from_url(
        settings.redis_url,
        wait_timeout=timeout,  # waiting for a free permit
        max_connections=settings.redis_max_connections,  # per node
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        # No cluster-level retry: RedisCluster would retry timeouts too, after rediscovering the
        # topology, so one stalled node would cost several timeouts. A failed call is a 503, and
        # the next call rediscovers the nodes (after a failover or a restart).
        retry=Retry(NoBackoff(), retries=0),
    )
    if not isinstance(client, ClusterClient):  # from_url builds `cls`, typed as its base class
        raise TypeError("RedisCluster.from_url did not build a ClusterClient")
    return client


async def close_redis(redis: RedisClient) -> None:
    """Close the client and its connections (a `Redis` given a pool would leave the pool open)."""
    if isinstance(redis, RedisCluster):
        await redis.aclose()
    else:
        await redis.aclose(close_connection_pool=True)


async def is_ready(redis: RedisClient, timeout_seconds: float) -> bool:
    """True when Redis (on a cluster: every primary) answers PING within the timeout."""
    try:
        async with asyncio.timeout(timeout_seconds):
            return bool(await redis.ping())
    except PING_ERRORS:
        return False
