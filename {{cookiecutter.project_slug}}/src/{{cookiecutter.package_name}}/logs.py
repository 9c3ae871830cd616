"""Logging for `serve`: one handler and one format for uvicorn's lines and the app's own.

`serve` hands `log_config(...)` to uvicorn, which applies it in every process (each worker of
`--workers N` too). Lines go to stderr, in one of two formats (`APP_LOG_FORMAT`):

- `json`: one object per line, `time`, `level`, `logger`, `message`, the request id of the
  request being served (`request_id`) and, when that request is traced, its `trace_id` and
  `span_id`, and the fields a line was given (`FIELDS`);
- `text`: `<time> <LEVEL> <logger>: <message>`, for people reading a terminal.

Request lines (`middleware.RequestLog`, one per answered HTTP request) carry the path without
its query string: a query string can hold a secret (`?access_token=...`), and the log is read by
more people than the service's clients.

uvicorn writes a warning for every connection that sends bytes it cannot parse; a client can
send those as fast as it likes. `RepeatedClientWarnings` lets one such line through per
`CLIENT_WARNING_WINDOW_SECONDS` and counts the rest into the next one.
"""

from __future__ import annotations

import json
import logging
import logging.config
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal

PACKAGE = __name__.rpartition(".")[0]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The extra fields a JSON line may carry (`logger.info(..., extra={...})`), and no others: a
# record's other attributes are logging's internals.
FIELDS = ("event", "sub", "client", "method", "path", "status", "duration_ms")

# The id of the request this task is serving; `RequestLog` sets it and resets it around each
# request. A ContextVar is per asyncio task, so concurrent requests never see each other's.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# With tracing on (tracing.py), the trace and span ids of the sampled request this task is
# serving, as the integers OpenTelemetry keeps; JSON lines write them as W3C's hex.
TRACE_IDS: ContextVar[tuple[int, int] | None] = ContextVar("trace_ids", default=None)


class DropQueryStrings(logging.Filter):
    """Cuts each text argument of a record at its first `?`, before any formatter sees it.

    uvicorn logs a WebSocket handshake on `uvicorn.error` as `'%s - "WebSocket %s" ...'`
    (client, target), and, when someone enables its access log, a request on `uvicorn.access`
    as `'%s - "%s %s HTTP/%s" %d'`. Of these only the target can hold a `?`, and its first one
    starts the query string (uvicorn writes a `?` inside the path as `%3F`): the path stays,
    the query string goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.partition("?")[0] if isinstance(arg, str) else arg for arg in record.args
            )
        return True


# What uvicorn logs (on `uvicorn.error`) once per bad request or connection. Whoever sends the
# bad bytes decides how many there are, so these are the lines a client can flood the log with.
CLIENT_WARNINGS = frozenset(
    {
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "Exceeded concurrency limit.",
    }
)
CLIENT_WARNING_WINDOW_SECONDS = 10.0


class OncePerWindow:
    """Lets one event through per window and counts the others: `allow()` is None for an event
    left out, else how many were left out since the last one let through. Its state is one
    (window start, count) pair, whatever the number of events."""

    def __init__(
        self,
        window_seconds: float = CLIENT_WARNING_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.clock = clock
        self._started = -math.inf
        self._left_out = 0

    def allow(self) -> int | None:
        now = self.clock()
        if now - self._started < self.window_seconds:
            self._left_out += 1
            return None
        left_out, self._started, self._left_out = self._left_out, now, 0
        return left_out


class RepeatedClientWarnings(logging.Filter):
    """At most one line per window for each of `CLIENT_WARNINGS`; the others are counted, and
    the next line that gets through says how many were left out. Other records pass untouched.

    The state is one (window start, count) pair per message of that fixed set: a flood of bad
    requests costs a counter, not a line each.
    """

    def __init__(
        self,
        window_seconds: float = CLIENT_WARNING_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._windows = {
            message: OncePerWindow(window_seconds, clock) for message in CLIENT_WARNINGS
        }

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        window = self._windows.get(message) if isinstance(message, str) else None
        if window is None:
            return True
        left_out = window.allow()
        if left_out is None:
            return False
        if left_out:
            record.msg = f"{message} ({left_out} more since the last such line, not logged)"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record. `json.dumps` escapes control characters (and, by default,
    everything outside ASCII), so no text in a record can start a line of its own."""

    def __init__(self) -> None:
        super().__init__()
        # The formatted second of the last record: lines come many to a second, and strftime
        # is the costliest part of a line. One entry, replaced, never a growing cache.
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()  # formatting runs in the task that logged
        if request_id is not None:
            line["request_id"] = request_id
        trace_ids = TRACE_IDS.get()
        if trace_ids is not None:
            line["trace_id"] = f"{trace_ids[0]:032x}"
            line["span_id"] = f"{trace_ids[1]:016x}"
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


LogFormat = Literal["json", "text"]


def log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """The `logging.config.dictConfig` schema for `uvicorn.run(log_config=...)`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "drop_query_strings": {"()": DropQueryStrings},
            "repeated_client_warnings": {"()": RepeatedClientWarnings},
        },
        "formatters": {
            "text": {"format": TEXT_FORMAT},
            "json": {"()": JsonFormatter},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "stream": "ext://sys.stderr",
            }
        },
        # The one handler sits on the root logger: uvicorn's loggers, the app's and any
        # library's warnings all reach it, and none prints through Python's bare fallback.
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            # Filters on the loggers, not the handler: a handler added later gets clean records.
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"level": "INFO", "filters": ["drop_query_strings"]},
            "uvicorn.error": {"filters": ["drop_query_strings", "repeated_client_warnings"]},
            PACKAGE: {"level": "INFO"},
        },
    }


def log_to_stderr(log_format: LogFormat) -> None:
    """For a command other than `serve` (which hands `log_config` to uvicorn): the same handler
    and format, unless the process has set up logging already (a test runner, a host program)."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(log_config(log_format))
