"""Users: who may log in, with which password hash and scopes.

`UserStore` is the extension point. The default, `FileUserStore`, keeps users in one JSON file
(`APP_USERS_FILE`) that `python -m {{ cookiecutter.package_name }} create-user` and the other user
commands write; a running service notices the change at the next login, without a restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

# User names become Redis Cluster hash tags (`{name}`) and token subjects: no braces, no spaces.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# A scope is an RFC 6749 scope-token: printable ASCII without space, `"` and `\`.
SCOPE_PATTERN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")
FILE_VERSION = 1
# Reading the users file failed, or what it holds is not JSON of the expected shape.
UNREADABLE_ERRORS = (OSError, ValueError)

logger = logging.getLogger(__name__)


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
    successful login asks twice: again once its session is open (see `auth/routes.py`).
    Raise on infrastructure failures rather than answering None.
    """

    async def get(self, name: str) -> User | None: ...


class FileUserStore:
    """Users in a JSON file, re-read whenever it changes, replaced atomically on every write.

    The lookup costs one `os.stat`; the file is parsed again only when its identity, size or
    modification time differ from what was last read. Readers never see a half-written file.
    Writers (the user commands) take a lock on the file's directory for their read-change-write,
    so two commands run at once cannot undo each other's change (a user disabled by one and
    enabled again by the other's stale copy).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime in ns)
        self._users: dict[str, User] = {}

    async def get(self, name: str) -> User | None:
        # A stat and, rarely, a small read: cheap enough to do on the event loop.
        self._reload_if_changed()
        return self._users.get(name)

    def put(self, user: User) -> bool:
        """Add `user`, or replace the password and scopes of a user of that name, who stays
        disabled if they were; True when the name was new."""
        with self._locked():
            users = self._read()
            existing = users.get(user.name)
            if existing is not None:
                user = replace(user, disabled=existing.disabled)
            users[user.name] = user
            self._write(users)
        return existing is None

    def change(self, name: str, edit: Callable[[User], User | None]) -> bool:
        """Replace user `name` by `edit(user)`, or remove them when it returns None; False, and
        the file untouched, when there is no such user."""
        with self._locked():
            users = self._read()
            if name not in users:
                return False
            edited = edit(users.pop(name))
            if edited is not None:
                users[name] = edited
            self._write(users)
        return True

    def read_all(self) -> dict[str, User]:
        """Every user, read from the file now; OSError or ValueError when it cannot be read."""
        return self._read()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the file's directory: the file itself is replaced by each
        write, so a lock on it would not outlive the write. Released when the process ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _reload_if_changed(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            self._seen, self._users = None, {}
            return
        seen = (status.st_ino, status.st_size, status.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen  # this version is read once, whether or not it parses
        try:
            self._users = self._read()
        except UNREADABLE_ERRORS:
            # Keep serving the last good version; a hand edit gone wrong must not lock out all.
            logger.warning("users file %s is unreadable; keeping the previous users", self.path)

    def _read(self) -> dict[str, User]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_users(json.loads(text))

    def _write(self, users: dict[str, User]) -> None:
        """Write a temporary file next to the real one, then rename it over (atomic on POSIX)."""
        document = {
            "version": FILE_VERSION,
            "users": {
                name: {
                    "password_hash": user.password_hash,
                    "scopes": sorted(user.scopes),
                    "disabled": user.disabled,
                }
                for name, user in sorted(users.items())
            },
        }
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".users-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp makes it 0600
                json.dump(document, file, indent=2)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def parse_users(document: Any) -> dict[str, User]:
    """Users from the file's JSON; ValueError when its shape is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("users"), dict):
        raise ValueError("expected an object with a 'users' object")
    users = {}
    for name, entry in document["users"].items():
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
        users[name] = User(
            name=name, password_hash=password_hash, scopes=frozenset(scopes), disabled=disabled
        )
    return users
