"""The example router's data (`api/items.py`): each user's newest items, in Redis.

Kept the way every key here is kept: under the key prefix, with a hash tag (`keyspace.py`),
bounded in size (`MAX_ITEMS`) and with a TTL. The app state makes one `ItemStore` when the app
starts (`state.py`); replace it with the stores of your own routes.
"""

from __future__ import annotations

from . import scripts
from .keyspace import Keyspace
from .redis_clients import RedisClient
from .settings import Settings
from .tracing import REDIS_ATTRIBUTES, Tracing

MAX_ITEMS = 100  # per user; adding one more drops the oldest
ITEMS_TTL_SECONDS = 24 * 60 * 60  # a user's items go a day after their last addition
NEWEST_SPAN_ATTRIBUTES = {**REDIS_ATTRIBUTES, "db.operation.name": "LRANGE"}


class ItemStore:
    """Each user's newest items, in one Redis list per user (the pooled client: these calls
    come on top of the request's session check)."""

    def __init__(
        self, redis: RedisClient, settings: Settings, tracing: Tracing | None = None
    ) -> None:
        self._redis = redis
        self._keys = Keyspace(settings.redis_key_prefix)
        self._tracing = tracing
        self._add = scripts.register(redis, "items_add.lua", tracing=tracing)

    async def add(self, sub: str, text: str) -> None:
        """One script call: add, drop the oldest beyond `MAX_ITEMS`, renew the TTL."""
        ttl_ms = ITEMS_TTL_SECONDS * 1000
        await self._add(keys=[self._keys.items(sub)], args=[text, MAX_ITEMS, ttl_ms])

    async def newest(self, sub: str) -> list[str]:
        key = self._keys.items(sub)
        if self._tracing is None:
            values = await self._redis.lrange(key, 0, MAX_ITEMS - 1)
        else:
            async with self._tracing.client_span("items.newest", NEWEST_SPAN_ATTRIBUTES):
                values = await self._redis.lrange(key, 0, MAX_ITEMS - 1)
        # Bytes from this client (it does not decode replies); redis-py's types allow str too.
        return [value.decode() if isinstance(value, bytes) else value for value in values]
