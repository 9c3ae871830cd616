"""The Redis client: one pool per process, opened in the app's lifespan, never at import time.

Every timeout is explicit. redis-py's defaults (5 s socket timeouts, several retries with backoff)
would make a request wait many seconds on a stalled Redis; here a call either answers within
`APP_REDIS_TIMEOUT_SECONDS` or fails, and the app turns the failure into a 503.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .settings import Settings

HEALTH_CHECK_INTERVAL_SECONDS = 30  # PING an idle pooled connection before reusing it


def create_redis(settings: Settings) -> Redis:
    """A client over a bounded pool; callers wait at most the timeout for a free connection."""
    timeout = settings.redis_timeout_seconds
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,  # waiting for a free connection
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        # One immediate retry on a broken connection (e.g. after a Redis restart); a timeout
        # is not retried, so a stalled Redis costs one timeout, not several.
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )
    return Redis(connection_pool=pool)


async def is_ready(redis: Redis, timeout_seconds: float) -> bool:
    """True when Redis answers PING within the timeout."""
    try:
        async with asyncio.timeout(timeout_seconds):
            return bool(await redis.ping())
    except (RedisError, OSError, TimeoutError):
        return False
