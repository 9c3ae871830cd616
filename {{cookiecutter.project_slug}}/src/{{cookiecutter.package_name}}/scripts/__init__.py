"""The Redis Lua scripts, kept as files beside this module and loaded once per app.

Redis scripts cannot import one another, so a script that rate-limits gets `gcra.lua` (the
shared GCRA functions) put in front of it here, once, before it is hashed and registered.
"""

from __future__ import annotations

from importlib import resources

from redis.commands.core import AsyncScript

from ..redis import RedisClient

SHARED = "gcra.lua"


def read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def register(redis: RedisClient, name: str, *, with_gcra: bool = False) -> AsyncScript:
    """A callable script; it runs by EVALSHA and reloads itself after `NOSCRIPT` (Redis restart)."""
    source = read(name)
    if with_gcra:
        source = read(SHARED) + "\n" + source
    return redis.register_script(source)
