"""What a Redis failover looks like to this service's connections, and what they do about it.

Two things go wrong on a connection during a failover, and both must end as a dropped connection
and, at worst, a 503 (a `RedisError`), never a 500:

- **Behind one address** (a managed endpoint, a Sentinel-aware proxy): the replica is promoted,
  new connections reach it, but a connection opened before may still reach the old primary,
  which is now a replica. Every write there is answered `READONLY`, for as long as the
  connection lives. redis-py keeps such a connection in its pool: `Redis.execute_command`
  retries only the errors its `Retry` supports and returns the connection to the pool after any
  other (redis/asyncio/client.py). Only its Sentinel connection drops one
  (`SentinelManagedConnection.read_response` in redis/asyncio/sentinel.py, which disconnects
  and raises `ConnectionError` on `ReadOnlyError`: the answer to redis-py issues #435 and #460).
  So here a `READONLY` reply closes its connection too (`DropOnReadOnly`, and the shared
  connection in `multiplex.py`) and raises `DemotedError`. A replica runs no write, so the
  command is sent once more, on a new connection, which reaches the new primary.
- **On Redis Cluster**, when a node dies, redis-py's cluster client disconnects that node's idle
  connections (`ClusterNode.disconnect_free_connections`, and all of every node's connections
  after `CLUSTERDOWN`) while other requests may already have taken them from the pool. Such a
  request then writes to a connection being closed: redis-py's `Connection.disconnect` closes
  the writer, waits, then sets it to None, so the write raises `AttributeError` ('NoneType' has
  no 'writelines') or, under uvloop, `RuntimeError` (unable to perform operation on a closed
  transport). Neither is a `RedisError`. `CheckWriter` makes that write a `ConnectionError`,
  which the cluster client handles as it handles a dead node: it drops the connection and
  reads the cluster's layout again before the next call.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError


class DemotedError(ReadOnlyError):
    """Redis answered `READONLY`: the connection reaches a replica, most likely a primary demoted
    behind the same address. The connection is closed; the command, which a read-only replica
    cannot have run, may be sent again on a new connection."""


class DropOnReadOnly(AbstractConnection):
    """A redis-py connection that closes itself on a `READONLY` reply (mixed in before a redis-py
    connection class: see `drop_on_read_only`)."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError as error:
            await self.disconnect()
            raise DemotedError(*error.args) from None


class CheckWriter(AbstractConnection):
    """A redis-py connection whose write fails with `ConnectionError` when another task has
    closed the connection meanwhile (mixed in before a redis-py connection class)."""

    async def _send_packed_command(self, command: Any) -> None:
        # Checked and written with no `await` in between: nothing can close it in the gap.
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise RedisConnectionError("the connection was closed while this command waited")
        await super()._send_packed_command(command)


def with_mixin(mixin: type[Any], base: type[Any]) -> type[Any]:
    """`base` (a redis-py connection class: TCP, TLS or Unix socket) with `mixin` in front."""
    if issubclass(base, mixin):
        return base
    return type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})
