"""Count the commands clients send to Redis, with MONITOR (commands run by scripts excluded).

`INFO commandstats` cannot tell a client's EVALSHA from the commands its script runs; MONITOR
can: it reports script commands as coming from "lua". MONITOR slows Redis down, so measure
with it separately from any timing.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

STOP_TIMEOUT_SECONDS = 10


@contextmanager
def client_commands(redis_url: str) -> Iterator[Counter[str]]:
    """Yield a Counter that fills with the client commands sent while the block runs.

    The counting connection's own commands and the end marker are not counted.
    """
    counts: Counter[str] = Counter()
    marker = f"monitor-end-{secrets.token_hex(8)}"
    started = threading.Event()
    with Redis.from_url(redis_url) as watcher, Redis.from_url(redis_url) as signaller:

        def watch() -> None:
            with watcher.monitor() as monitor:
                started.set()
                while True:
                    entry = monitor.next_command()
                    command = str(entry["command"])
                    if marker in command:
                        return
                    if entry.get("client_type") != "lua":
                        counts[command.split(" ", 1)[0].upper()] += 1

        signaller.ping()  # connect now, so its handshake is not counted
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        if not started.wait(STOP_TIMEOUT_SECONDS):
            raise RuntimeError("MONITOR did not start")
        try:
            yield counts
        finally:
            signaller.echo(marker)
            thread.join(STOP_TIMEOUT_SECONDS)
