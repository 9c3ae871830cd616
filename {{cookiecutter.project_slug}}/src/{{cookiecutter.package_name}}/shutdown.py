"""Draining: what a serving process does between SIGTERM and stopping.

A replica that is told to stop is still in its balancer's list for a moment: nginx chooses it
until Docker's DNS stops naming it (which happens only once the process has exited), and a
Kubernetes Service until the endpoint update has reached every node. A process that stopped
accepting at once would fail the requests sent to it meanwhile. So on SIGTERM it drains, for
`APP_SHUTDOWN_DRAIN_SECONDS`:

- `/health/ready` answers 503 at once, so balancers that probe it stop choosing this process;
- every request is still served, and every answer carries `Connection: close`, so no proxy
  keeps an idle connection to this process (nginx would send the next request on it just as
  the process closes it);
- then uvicorn's own graceful shutdown runs: it stops accepting, lets requests in flight finish
  (for up to `cli.GRACEFUL_SHUTDOWN_SECONDS`), and the process exits 0.

A second SIGTERM, or SIGINT (Ctrl-C), stops at once, without waiting for the drain to end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

from .logs import PACKAGE

logger = logging.getLogger(f"{PACKAGE}.shutdown")


class Drain:
    """Whether this process is draining. One per app (`AppState.drain`); it only ever goes
    from not draining to draining."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False

    def begin(self) -> None:
        self.started = True


def drain_on_sigterm(drain: Drain, seconds: float) -> None:
    """Make the next SIGTERM start `drain`, and pass it on to the server `seconds` later.

    Called by `serve` in each serving process once uvicorn handles its signals (while it loads
    the app, from inside its event loop): uvicorn's SIGTERM handler, which begins its graceful
    shutdown, is what runs when the drain ends. With `seconds` at 0 nothing changes.
    """
    stop = signal.getsignal(signal.SIGTERM)
    if seconds <= 0 or not callable(stop):
        return
    loop = asyncio.get_running_loop()
    signalled = False

    def begin() -> None:
        drain.begin()
        logger.info("SIGTERM: draining for %g s (readiness answers 503), then stopping", seconds)
        loop.call_later(seconds, stop, signal.SIGTERM, None)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal signalled
        if signalled:  # the second one: stop now
            stop(signum, frame)
            return
        signalled = True
        # A signal handler may run in the middle of the loop's own code: the drain begins on
        # the loop's next turn instead (the loop is woken through its self-pipe).
        loop.call_soon_threadsafe(begin)

    signal.signal(signal.SIGTERM, on_sigterm)
