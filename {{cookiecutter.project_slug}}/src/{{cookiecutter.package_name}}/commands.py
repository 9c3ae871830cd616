"""What every command of the command line shares, apart from the commands themselves: the
settings (or one line per bad one, and status 2) and ending a name's sessions. `cli.py` and
`client_commands.py` both build on it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError
from redis.exceptions import RedisError

from .settings import Settings, get_settings


class Listed(Protocol):
    """What `list-users` and `list-clients` show of a record: never its hash."""

    @property
    def scopes(self) -> frozenset[str]: ...

    @property
    def disabled(self) -> bool: ...


def describe(error: ValidationError) -> str:
    """One line per bad setting, named as the user sets it; pydantic's copy of the input is left
    out, so a rejected secret is never echoed."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        field = "_".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if field:
            lines.append(f"error: APP_{field.upper()}: {message}")
        elif message.startswith("APP_"):  # a check across settings names its variable itself
            lines.append(f"error: {message}")
        else:
            lines.append(f"error: settings: {message}")
    return "\n".join(lines)


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as error:
        print(describe(error), file=sys.stderr)
        raise SystemExit(2) from None


def end_sessions(command: str, settings: Settings, name: str, done: str) -> int | None:
    """End every session of `name` with the script `POST /auth/logout-all` runs; how many were
    alive. None, after one line saying what was `done` and what was not, when Redis does not
    answer: the file has changed, and the command should be run again."""
    from .auth.sessions import SessionStore
    from .redis_clients import close_redis, create_redis

    async def revoke_all() -> int:
        redis = create_redis(settings)
        try:
            return await SessionStore(redis, settings).revoke_all(name)
        finally:
            await close_redis(redis)

    try:
        return asyncio.run(revoke_all())
    except (RedisError, OSError, TimeoutError) as error:
        print(
            f"error: {command}: {done}, but could not end their sessions: Redis did not answer "
            f"({type(error).__name__}); run {command} again once it does",
            file=sys.stderr,
        )
        return None


def print_records(records: Mapping[str, Listed], file: Path, kind: str) -> None:
    """One line per record, sorted by name: its name, state and scopes."""
    if not records:
        print(f"no {kind} in {file}")
        return
    width = max(len("NAME"), *(len(name) for name in records))
    print(f"{'NAME':<{width}}  STATE     SCOPES")
    for name, record in sorted(records.items()):
        state = "disabled" if record.disabled else "enabled"
        print(f"{name:<{width}}  {state:<8}  {' '.join(sorted(record.scopes)) or '(none)'}")
