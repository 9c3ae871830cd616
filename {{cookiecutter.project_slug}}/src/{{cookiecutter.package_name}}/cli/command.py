"""What every command stands on: its one error type, the settings (or one line per bad one), the
users and clients files, and ending a name's sessions. The commands of `serve.py`, `users.py`,
`clients.py` and `keys.py` raise `CommandError`; `main` (`__init__.py`) alone turns it into
`error: ...` lines on stderr and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from redis.exceptions import RedisError

from .. import audit
from ..auth.users import SCOPE_PATTERN
from ..logs import log_to_stderr
from ..settings import Settings, get_settings

# The exit statuses of every command but `serve` (0 when done), as the README documents them.
# Nothing was changed: bad input, an unknown name, bad settings, a file that cannot be read.
REFUSED = 2
# A file was changed but Redis did not answer, so the name's sessions could not be ended: the
# change holds (no new login, refresh or token), and running the same command again finishes it.
UNFINISHED = 1

# A setting that `.env` gives a checkout and nothing else does (the secret, the key files).
# Missing where there is no `.env`, the likely cause is a command run outside the project folder,
# and the setting's own hint ("generate one") would send the user the wrong way.
REQUIRED_SETTING = re.compile(r"^(APP_[A-Z0-9_]+) is required for ")


# A command's (name, function, one-line help); the function raises CommandError or returns (0).
Command = tuple[str, Callable[[argparse.Namespace], None], str]


class CommandError(Exception):
    """Why a command stopped. `main` prints each line of `message` as `error: <line>` on stderr
    (one line, or one per bad setting) and exits with `status`. A message names files and
    settings, never a secret, a hash or what a file holds."""

    def __init__(self, message: str, status: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def setting_problems(error: ValidationError) -> list[str]:
    """One line per bad setting, named as the user sets it; pydantic's copy of the input is left
    out, so a rejected secret is never echoed."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        field = "_".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if field:
            lines.append(f"APP_{field.upper()}: {message}")
        elif message.startswith("APP_"):  # a check across settings names its variable itself
            lines.append(message)
        else:
            lines.append(f"settings: {message}")
    return lines


def describe(error: ValidationError) -> str:
    """`setting_problems` as the commands print them: `error: ...`, one line each."""
    return "\n".join(f"error: {problem}" for problem in setting_problems(error))


def load_settings() -> Settings:
    """The settings, or CommandError (2) with one line per bad one. A required setting missing
    where there is no `.env` is reported as that: no `.env`, and the folder looked in."""
    try:
        return get_settings()
    except ValidationError as error:
        problems = setting_problems(error)
    env_file = Path(str(Settings.model_config.get("env_file")))  # relative: the current folder
    if not env_file.exists():
        problems = [without_env_file(problem, env_file) for problem in problems]
    raise CommandError("\n".join(problems))


def without_env_file(problem: str, env_file: Path) -> str:
    required = REQUIRED_SETTING.match(problem)
    if required is None:
        return problem
    folder = env_file.absolute().parent
    return (
        f"no {env_file.name} in {folder} (run this from the project folder, or set {required[1]})"
    )


def end_sessions(command: str, settings: Settings, name: str, done: str) -> int:
    """End every session of `name` with the script `POST /auth/logout-all` runs; how many were
    alive. When Redis does not answer, CommandError (1) saying what was `done` and what was not:
    the file has changed, and the command should be run again."""
    from ..auth.sessions import SessionStore
    from ..redis_clients import close_redis, create_redis

    async def revoke_all() -> int:
        redis = create_redis(settings)
        try:
            return await SessionStore(redis, settings).revoke_all(name)
        finally:
            await close_redis(redis)

    try:
        return asyncio.run(revoke_all())
    except (RedisError, OSError, TimeoutError) as error:
        raise CommandError(
            f"{command}: {done}, but could not end their sessions: Redis did not answer "
            f"({type(error).__name__}); run {command} again once it does",
            UNFINISHED,
        ) from None


class Listed(Protocol):
    """What `list-users` and `list-clients` show of a record: never its hash."""

    @property
    def scopes(self) -> frozenset[str]: ...

    @property
    def disabled(self) -> bool: ...


R = TypeVar("R", bound=Listed)


class RecordStore(Protocol[R]):
    """What the commands use of `FileUserStore` and `FileClientStore`."""

    @property
    def path(self) -> Path: ...

    def read_all(self) -> Mapping[str, R]: ...

    def change(self, name: str, edit: Callable[[R], R | None]) -> bool: ...


@dataclass(frozen=True)
class Kind:
    """A kind of record the commands keep, as their messages name it."""

    noun: str  # "user": "no user named ..."
    plural: str  # "users": "no users in ...", "no users file at ..."
    setting: str  # the variable naming the file
    creator: str  # the command that writes a new file
    invalid: str  # why a file that parses badly cannot be read


def add_record_commands(
    commands: Any, create: Command, listing: Command, on_one: Iterable[Command]
) -> None:
    """Add the commands of one kind of record to `commands` (argparse's subparsers of the main
    parser), as users and clients both have them: `create` takes NAME and `--scopes`, `listing`
    no argument, and each of `on_one` the NAME of the record it changes."""
    name, function, summary = create
    parser = commands.add_parser(name, help=summary)
    parser.add_argument("name")
    parser.add_argument("--scopes", default="", help='space-separated, e.g. "read write"')
    parser.set_defaults(handler=function)
    name, function, summary = listing
    commands.add_parser(name, help=summary).set_defaults(handler=function)
    for name, function, summary in on_one:
        parser = commands.add_parser(name, help=summary)
        parser.add_argument("name")
        parser.set_defaults(handler=function)


def must_exist(command: str, kind: Kind, path: Path) -> None:
    """The records file exists; else CommandError (2) naming where it was looked for, as an
    absolute path: a relative one (the default `data/...`) is relative to the current folder."""
    if not path.exists():
        raise CommandError(
            f"{command}: no {kind.plural} file at {path.absolute()} ({kind.creator} writes it; "
            f"run this from the project folder, or set {kind.setting})"
        )


def unreadable(command: str, kind: Kind, path: Path, error: OSError | ValueError) -> CommandError:
    """A records file (or its folder) cannot be read or parsed: one line, never its content."""
    reason = error.strerror if isinstance(error, OSError) else kind.invalid
    filename = getattr(error, "filename", None) or path
    return CommandError(f"{command}: {filename}: {reason}")


def list_records(command: str, kind: Kind, records: RecordStore[R]) -> None:
    """One line per record, sorted by name: its name, state and scopes. A file that does not
    exist is an error; one that exists and holds none says so, with status 0."""
    must_exist(command, kind, records.path)
    try:
        listed = records.read_all()
    except (OSError, ValueError) as error:
        raise unreadable(command, kind, records.path, error) from None
    if not listed:
        print(f"no {kind.plural} in {records.path}")
        return
    width = max(len("NAME"), *(len(name) for name in listed))
    print(f"{'NAME':<{width}}  STATE     SCOPES")
    for name, record in sorted(listed.items()):
        state = "disabled" if record.disabled else "enabled"
        print(f"{name:<{width}}  {state:<8}  {' '.join(sorted(record.scopes)) or '(none)'}")


def change_record(
    command: str,
    kind: Kind,
    records: RecordStore[R],
    name: str,
    edit: Callable[[R], R | None],
    settings: Settings,
    event: str,
) -> None:
    """Change record `name` in its file with `edit` (None deletes it) and write audit `event`,
    or CommandError (2) saying why nothing changed: no file, an unreadable one, no such name.

    The commands that end sessions call this first: from then on the name can neither log in,
    refresh nor get a token (each looks the record up, and a login or grant looks again once its
    session exists), so no session appears after the sessions are ended. The other order would
    leave a moment in between to log in again.
    """
    must_exist(command, kind, records.path)  # before `change`, which would make its folder
    try:
        found = records.change(name, edit)
    except (OSError, ValueError) as error:
        raise unreadable(command, kind, records.path, error) from None
    if not found:
        raise unknown(command, kind, records.path, name)
    log_to_stderr(settings.logs_as)
    audit.event(event, client="cli", sub=name)


def require_record(command: str, kind: Kind, records: RecordStore[R], name: str) -> None:
    """Record `name` is in its file now, or CommandError (2) as `change_record` would raise it:
    for a command that asks for input before it changes anything."""
    must_exist(command, kind, records.path)
    try:
        known = name in records.read_all()
    except (OSError, ValueError) as error:
        raise unreadable(command, kind, records.path, error) from None
    if not known:
        raise unknown(command, kind, records.path, name)


def unknown(command: str, kind: Kind, path: Path, name: str) -> CommandError:
    return CommandError(f"{command}: no {kind.noun} named {name!r} in {path}")


def scopes_problem(scopes: frozenset[str]) -> str | None:
    """Why a command's `--scopes` cannot be given to a user or a client, if it cannot."""
    bad = sorted(scope for scope in scopes if not SCOPE_PATTERN.fullmatch(scope))
    if not bad:
        return None
    return (
        f"{bad[0]!r} is not a valid scope; use printable ASCII without quotes or backslashes, "
        "at most 64 characters"
    )
