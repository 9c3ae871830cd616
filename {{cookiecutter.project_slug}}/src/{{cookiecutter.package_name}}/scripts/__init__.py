"""The Redis Lua scripts, kept as files beside this module and loaded once per app."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def register(redis: Redis, name: str) -> AsyncScript:
    """A callable script; it runs by EVALSHA and reloads itself after `NOSCRIPT` (Redis restart)."""
    return redis.register_script(read(name))
