"""Users: who may log in, with which password hash and scopes.

`UserStore` is the extension point. The default, `FileUserStore`, keeps users in one JSON file
(`APP_USERS_FILE`) that `python -m {{ cookiecutter.package_name }} create-user` and the other user
commands write; a running service notices the change at the next login, without a restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .records import NameTakenError, RecordFile

# User names become Redis Cluster hash tags (`{name}`) and token subjects: no braces, no spaces.
# Service accounts' names are subjects too, of the same shape, in the same name space (clients.py).
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# A scope is an RFC 6749 scope-token: printable ASCII without space, `"` and `\`.
SCOPE_PATTERN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str  # argon2 PHC string; never logged
    scopes: frozenset[str]
    disabled: bool = False  # may not log in or refresh (`disable-user`)


class UserStore(Protocol):
    """Where the login route looks users up.

    To keep users elsewhere (a database, a directory), write a class with this one async method
    and pass an instance to `create_app(settings, users=...)`. Return None for an unknown name;
    the login route then spends the same time on a dummy hash, so callers cannot tell the two
    apart. A user with `disabled=True` gets the answer of a wrong password, and no refresh. A
    successful login asks twice: again once its session is open (see `api/auth_routes.py`).
    Raise on infrastructure failures rather than answering None.
    """

    async def get(self, name: str) -> User | None: ...


class FileUserStore:
    """Users in a JSON file (`records.RecordFile`): re-read whenever it changes, replaced
    atomically on every write; writers (the user commands) hold a lock on the file's directory
    for their read-change-write, so two commands run at once cannot undo each other's change
    (a user disabled by one and enabled again by the other's stale copy).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RecordFile(path, "users", parse_user, dump_user)

    async def get(self, name: str) -> User | None:
        # A stat and, rarely, a small read: cheap enough to do on the event loop.
        return self._file.current(name)

    def put(self, user: User, reserved: Callable[[], Container[str]] = frozenset) -> bool:
        """Add `user`, or replace the password and scopes of a user of that name, who stays
        disabled if they were; True when the name was new. A name in `reserved` (the service
        accounts' names, read under the file's lock) raises `NameTakenError`."""
        with self._file.locked():
            if user.name in reserved():
                raise NameTakenError(user.name)
            users = self._file.read_all()
            existing = users.get(user.name)
            if existing is not None:
                user = replace(user, disabled=existing.disabled)
            users[user.name] = user
            self._file.write_all(users)
        return existing is None

    def change(self, name: str, edit: Callable[[User], User | None]) -> bool:
        """Replace user `name` by `edit(user)`, or remove them when it returns None; False, and
        the file untouched, when there is no such user."""
        return self._file.change(name, edit)

    def read_all(self) -> dict[str, User]:
        """Every user, read from the file now; OSError or ValueError when it cannot be read."""
        return self._file.read_all()

    def locked(self) -> AbstractContextManager[None]:
        """The lock the writers hold (see `records.RecordFile.locked`)."""
        return self._file.locked()


def dump_user(user: User) -> dict[str, Any]:
    return {
        "password_hash": user.password_hash,
        "scopes": sorted(user.scopes),
        "disabled": user.disabled,
    }


def parse_user(name: str, entry: Any) -> User:
    """One user entry of the file; ValueError when its shape is wrong."""
    if not USERNAME_PATTERN.fullmatch(name) or not isinstance(entry, dict):
        raise ValueError("malformed user entry")
    password_hash, scopes = entry.get("password_hash"), entry.get("scopes")
    disabled = entry.get("disabled", False)  # absent in files written before it existed
    if not isinstance(password_hash, str) or not isinstance(scopes, list):
        raise ValueError("malformed user entry")
    if not isinstance(disabled, bool):
        raise ValueError("malformed user entry")
    if not all(isinstance(scope, str) and SCOPE_PATTERN.fullmatch(scope) for scope in scopes):
        raise ValueError("malformed scope")
    return User(name=name, password_hash=password_hash, scopes=frozenset(scopes), disabled=disabled)
