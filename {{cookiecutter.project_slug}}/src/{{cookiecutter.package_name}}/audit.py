"""The audit trail: who logged in, failed to, was limited, refreshed, reused a spent refresh
token, logged out; which users were created, updated, disabled, enabled, deleted or given a new
password. One line per event on the logger `<package>.audit`, so it can be routed apart from
the rest (see the README's Logs section).

Each line names the `event`, the `sub` when it is known, and the `client` (an address, or `cli`
for commands); the request id comes with every line of a request (`logs.REQUEST_ID`). Never a
token, password or hash. A failed login names the account only when it exists: the text of an
unknown name is whatever the client typed, which is often a password typed in the wrong field.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def event(name: str, *, client: str, sub: str | None = None, level: int = logging.INFO) -> None:
    """Write audit event `name`. `sub` must be a known user's name, never raw client input."""
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "%s sub=%s client=%s",
        name,
        sub or "-",
        client,
        extra={"event": name, "sub": sub, "client": client},
    )
