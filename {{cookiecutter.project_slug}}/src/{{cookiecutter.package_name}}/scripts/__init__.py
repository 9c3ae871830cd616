"""The Redis Lua scripts, kept as files beside this module and loaded once per app.

Redis scripts cannot import one another, so a script that rate-limits gets `gcra.lua` (the
shared GCRA functions) put in front of it here, once, before it is hashed and registered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from importlib import resources
from typing import Any, Protocol

from ..multiplex import MultiplexedRedis
from ..redis_clients import RedisClient
from ..tracing import Tracing

SHARED = "gcra.lua"
# What each script does, as its trace span is named (tracing.py): a fixed name per script,
# never its keys or arguments.
SPAN_NAMES = {
    "session_create.lua": "session.create",
    "request.lua": "session.admit",
    "session_refresh.lua": "session.refresh",
    "session_revoke.lua": "session.revoke",
    "session_revoke_all.lua": "session.revoke_all",
    "limit.lua": "limit.take",
    "refund.lua": "limit.refund",
    "items_add.lua": "items.add",
}


class RunScript(Protocol):
    """A registered script: `await script(keys=[...], args=[...])` runs it by `EVALSHA`, and
    loads it again after `NOSCRIPT` (a restarted or flushed Redis)."""

    def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Awaitable[Any]: ...


def read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def register(
    redis: RedisClient | MultiplexedRedis,
    name: str,
    *,
    with_gcra: bool = False,
    tracing: Tracing | None = None,
) -> RunScript:
    """The script `name`, to run through `redis`; each call a span of its own when traced."""
    source = read(name)
    if with_gcra:
        source = read(SHARED) + "\n" + source
    script: RunScript = redis.register_script(source)
    if tracing is None:
        return script
    return tracing.redis_script(script, SPAN_NAMES[name])
