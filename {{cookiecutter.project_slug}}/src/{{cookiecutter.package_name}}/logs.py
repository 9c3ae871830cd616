"""Logging for `serve`: one handler and one format for uvicorn's lines and the app's own.

`serve` hands `log_config()` to uvicorn, which applies it in every process (each worker of
`--workers N` too). Lines go to stderr as `<time> <LEVEL> <logger>: <message>`.

Request lines carry the path without its query string: a query string can hold a secret
(`?access_token=...`), and the log is read by more people than the service's clients.
"""

from __future__ import annotations

import logging
from typing import Any

PACKAGE = __name__.rpartition(".")[0]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DropQueryStrings(logging.Filter):
    """Cuts each text argument of a record at its first `?`, before any formatter sees it.

    uvicorn logs a request on `uvicorn.access` as `'%s - "%s %s HTTP/%s" %d'` (client, method,
    target, HTTP version, status), and a WebSocket handshake on `uvicorn.error` as
    `'%s - "WebSocket %s" ...'` (client, target). Of these only the target can hold a `?`, and
    its first one starts the query string (uvicorn writes a `?` inside the path as `%3F`): the
    path stays, the query string goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.partition("?")[0] if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def log_config() -> dict[str, Any]:
    """The `logging.config.dictConfig` schema for `uvicorn.run(log_config=...)`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"drop_query_strings": {"()": DropQueryStrings}},
        "formatters": {"text": {"format": TEXT_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "text",
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
            "uvicorn.error": {"filters": ["drop_query_strings"]},
            PACKAGE: {"level": "INFO"},
        },
    }
