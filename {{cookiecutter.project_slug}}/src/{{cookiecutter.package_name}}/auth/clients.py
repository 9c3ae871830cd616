"""Service accounts: OAuth clients that get tokens of their own with the client credentials grant.

`ClientStore` is the extension point, beside `UserStore`. The default, `FileClientStore`, keeps
clients in one JSON file (`APP_CLIENTS_FILE`) that `python -m {{ cookiecutter.package_name }}
create-client` and the other client commands write; a running service notices a change at the
next token request, without a restart.

A client's name is its `client_id` and the `sub` of its tokens. Users and clients share one
name space of subjects: sessions are keyed by subject (`p:{<sub>}:sess:<sid>`), so a client
named like a user would share that user's sessions, and `disable-client` would log the user
out. The commands refuse a client named like a user and a user named like a client, and the
grant refuses a client whose name a user also has (a hand edit).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .records import NameTakenError, RecordFile
from .users import SCOPE_PATTERN, USERNAME_PATTERN

# Client names have the shape of user names (they are subjects, and parts of Redis keys).
CLIENT_NAME_PATTERN = USERNAME_PATTERN
# 256 random bits, URL-safe: as strong as the HMAC secret, and safe in a form or a Basic header.
SECRET_BYTES = 32
# A longer secret in a request is wrong whatever it holds: refused before any hashing. Far more
# than the 43 characters of ours, for secrets set by hand in a store of your own.
MAX_SECRET_INPUT = 256


@dataclass(frozen=True, slots=True)
class Client:
    name: str  # the client id
    secret_hash: str  # argon2 PHC string; never logged
    scopes: frozenset[str]  # the most its tokens may carry
    disabled: bool = False  # gets no token (`disable-client`)


class ClientStore(Protocol):
    """Where the client credentials grant looks clients up.

    To keep clients elsewhere, write a class with this one async method and pass an instance to
    `create_app(settings, clients=...)`. Return None for an unknown name; the grant then spends
    the same time on a dummy hash, so callers cannot tell the two apart. A client with
    `disabled=True` gets the answer of a wrong secret. A successful grant asks twice: again once
    its token's session is open (a client disabled or re-keyed in between gets no token).
    Raise on infrastructure failures rather than answering None.
    """

    async def get(self, name: str) -> Client | None: ...


def new_secret() -> str:
    """A fresh client secret, shown once by the command that made it; only its hash is kept."""
    return secrets.token_urlsafe(SECRET_BYTES)


class FileClientStore:
    """Clients in a JSON file (`records.RecordFile`), like `FileUserStore`'s users."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = RecordFile(path, "clients", parse_client, dump_client)

    async def get(self, name: str) -> Client | None:
        return self._file.current(name)

    def add(self, client: Client, reserved: Callable[[], Container[str]] = frozenset) -> bool:
        """Add `client`; False, and the file untouched, when a client has the name. `reserved`
        (the users' names) is read under the file's lock and a name in it raises `NameTakenError`:
        with the default files in one directory, no user of that name can appear meanwhile."""
        with self._file.locked():
            clients = self._file.read_all()
            if client.name in reserved():
                raise NameTakenError(client.name)
            if client.name in clients:
                return False
            clients[client.name] = client
            self._file.write_all(clients)
        return True

    def change(self, name: str, edit: Callable[[Client], Client | None]) -> bool:
        """Replace client `name` by `edit(client)`, or remove it when that returns None; False,
        and the file untouched, when there is no such client."""
        return self._file.change(name, edit)

    def read_all(self) -> dict[str, Client]:
        """Every client, read from the file now; OSError or ValueError when it cannot be read."""
        return self._file.read_all()

    def locked(self) -> AbstractContextManager[None]:
        """The lock the writers hold (see `records.RecordFile.locked`)."""
        return self._file.locked()


def dump_client(client: Client) -> dict[str, Any]:
    return {
        "secret_hash": client.secret_hash,
        "scopes": sorted(client.scopes),
        "disabled": client.disabled,
    }


def parse_client(name: str, entry: Any) -> Client:
    """One client entry of the file; ValueError when its shape is wrong."""
    if not CLIENT_NAME_PATTERN.fullmatch(name) or not isinstance(entry, dict):
        raise ValueError("malformed client entry")
    secret_hash, scopes = entry.get("secret_hash"), entry.get("scopes")
    disabled = entry.get("disabled", False)
    if not isinstance(secret_hash, str) or not isinstance(scopes, list):
        raise ValueError("malformed client entry")
    if not isinstance(disabled, bool):
        raise ValueError("malformed client entry")
    if not all(isinstance(scope, str) and SCOPE_PATTERN.fullmatch(scope) for scope in scopes):
        raise ValueError("malformed scope")
    return Client(name=name, secret_hash=secret_hash, scopes=frozenset(scopes), disabled=disabled)
