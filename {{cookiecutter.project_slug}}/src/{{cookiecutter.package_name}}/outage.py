"""A Redis outage in the log: a few lines per outage, whatever the request rate.

While Redis does not answer, every request that needs it is answered 503, or, with
`APP_RATE_LIMIT_FAIL_OPEN=true`, skips its rate-limit check. A line for each would flood the log
(tens of thousands a minute under load), so each process writes instead:

- when the outage starts (its first failure): one line naming the error's class only, since
  Redis error texts can hold key names, and key names hold user names;
- every `WINDOW_SECONDS` while it lasts: how many requests failed and how many checks were
  skipped in that window;
- when it ends (a window without failures, then a PING answered): how long since it started,
  and the totals.

A healthy request never calls in here; only the failure paths do.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from . import metrics
from .redis_clients import RedisClient, is_ready

WINDOW_SECONDS = 10

logger = logging.getLogger(__name__)


class RedisOutage:
    """Counts this process's Redis failures and reports them from one background task.

    The task starts at an outage's first failure and stops at its end, or when the app shuts
    down (`close`). Its state is a few integers, whatever the outage's length.
    """

    def __init__(self, redis: RedisClient, timeout_seconds: float) -> None:
        self._redis = redis  # PINGed to see whether the outage is over
        self._timeout = timeout_seconds
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._started = 0.0
        self._failed = self._skipped = 0  # in the current window
        self._total_failed = self._total_skipped = 0  # in earlier windows of this outage

    def failed(self, error: BaseException) -> None:
        """A request was answered 503 because of `error`."""
        metrics.redis_failed(error)
        self._start(error)
        self._failed += 1

    def skipped(self, error: BaseException) -> None:
        """A rate-limit check was skipped (failing open) because of `error`."""
        metrics.redis_failed(error)
        self._start(error)
        self._skipped += 1

    async def close(self) -> None:
        """Stop watching, at shutdown: no task outlives the app."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])  # raises only if close() itself is cancelled

    def _start(self, error: BaseException) -> None:
        if self._watcher is not None or self._closed:
            return
        logger.warning("Redis unavailable (%s): outage started", type(error).__name__)
        self._started = time.monotonic()
        # In a context of its own: the request that happened to fail first is not the outage,
        # and its request id must not appear on the outage's later lines.
        self._watcher = asyncio.create_task(self._watch(), context=contextvars.Context())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_SECONDS)
            # A quiet window and a PING answered end the outage. The window is looked at again
            # after the PING: a failure may have come in meanwhile.
            if self._quiet() and await is_ready(self._redis, self._timeout) and self._quiet():
                break
            logger.warning(
                "Redis still unavailable: %d requests answered 503, %d rate-limit checks "
                "skipped in the last %d s",
                self._failed,
                self._skipped,
                WINDOW_SECONDS,
            )
            self._total_failed += self._failed
            self._total_skipped += self._skipped
            self._failed = self._skipped = 0
        logger.warning(
            "Redis answers again, %.0f s after the outage started: %d requests answered 503, "
            "%d rate-limit checks skipped in all",
            time.monotonic() - self._started,
            self._total_failed,
            self._total_skipped,
        )
        self._total_failed = self._total_skipped = 0
        self._watcher = None

    def _quiet(self) -> bool:
        return self._failed == self._skipped == 0
