"""The service-account commands: create-client, list-clients, disable-client, enable-client,
delete-client, rotate-client-secret.

A secret is printed once, to stdout, on a line of its own (`client_secret: <secret>`), and kept
only as an argon2 hash; it is never logged. The exit status is that of the user commands: 0 when
done; 2 when nothing was changed (an unknown client, a name that is taken, bad input, a clients
file that is missing or unreadable), with one line on stderr; 1 when the clients file was changed
but the client's tokens could not be ended (Redis did not answer), so the command should be run
again.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from .. import audit
from ..auth.clients import CLIENT_NAME_PATTERN, Client, FileClientStore, new_secret
from ..auth.passwords import password_hasher
from ..auth.records import NameTakenError
from ..auth.users import FileUserStore
from ..logs import log_to_stderr
from ..settings import Settings
from .command import (
    CommandError,
    Kind,
    add_record_commands,
    change_record,
    end_sessions,
    list_records,
    load_settings,
    scopes_problem,
    unreadable,
)

SECRET_LINE = "client_secret: {}"  # noqa: S105 (a format: scripts read the new secret from it)

CLIENTS = Kind(
    noun="client",
    plural="clients",
    setting="APP_CLIENTS_FILE",
    creator="create-client",
    # `create-client` reads the users file too (a client may not take a user's name).
    invalid="not a valid clients or users file",
)


def add_commands(commands: Any) -> None:
    """Add the client commands to `commands` (argparse's subparsers of the main parser)."""
    add_record_commands(
        commands,
        ("create-client", create_client, "add a service account; prints its secret once"),
        ("list-clients", list_clients, "each client's name, state and scopes"),
        [
            ("disable-client", disable_client, "refuse the client's tokens and end its live ones"),
            ("enable-client", enable_client, "let a disabled client get tokens again"),
            ("delete-client", delete_client, "remove the client and end its live tokens"),
            (
                "rotate-client-secret",
                rotate_client_secret,
                "a new secret, printed once; ends the client's live tokens",
            ),
        ],
    )


def create_client(args: argparse.Namespace) -> None:
    """Add a client with a fresh secret, printed once. A name that is a client's, a user's or
    the public client's is refused: users and clients share the subjects of tokens, and so
    their sessions (see auth/clients.py)."""
    command, name = "create-client", args.name
    scopes = frozenset(args.scopes.split())
    problem = name_problem(name) or scopes_problem(scopes)
    if problem is not None:
        raise CommandError(f"{command}: {problem}")
    settings = load_settings()
    if name == settings.public_client_id:
        raise CommandError(f"{command}: {name!r} is the public client's id (APP_PUBLIC_CLIENT_ID)")
    secret = new_secret()
    client = Client(name=name, secret_hash=password_hasher(settings).hash(secret), scopes=scopes)
    users = FileUserStore(settings.users_file)
    try:
        added = FileClientStore(settings.clients_file).add(client, reserved=users.read_all)
    except NameTakenError:
        raise CommandError(
            f"{command}: {name!r} is a user's name; users and clients share names"
        ) from None
    except (OSError, ValueError) as error:
        raise unreadable(command, CLIENTS, settings.clients_file, error) from None
    if not added:
        raise CommandError(
            f"{command}: a client named {name!r} exists; rotate-client-secret renews it"
        )
    log_to_stderr(settings.logs_as)
    audit.event("client_created", client="cli", sub=name)
    listed = " ".join(sorted(scopes)) or "(none)"
    print(f"created client {name} in {settings.clients_file}; scopes: {listed}")
    print(SECRET_LINE.format(secret))


def list_clients(args: argparse.Namespace) -> None:
    """Each client's name, state and scopes; never a secret or its hash. A clients file that
    does not exist is an error (it names where it was looked for), one without clients is not."""
    settings = load_settings()
    list_records("list-clients", CLIENTS, FileClientStore(settings.clients_file))


def disable_client(args: argparse.Namespace) -> None:
    """Refuse the client's tokens from now on, then end every live one."""
    command, name = "disable-client", args.name
    settings = load_settings()
    change_client(command, settings, name, "client_disabled", disabled=True)
    done = f"disabled client {name} in {settings.clients_file}"
    ended = end_sessions(command, settings, name, done)
    print(f"{done}; ended {ended} token(s)")


def enable_client(args: argparse.Namespace) -> None:
    """Let a disabled client get tokens again (its ended tokens stay ended)."""
    command, name = "enable-client", args.name
    settings = load_settings()
    change_client(command, settings, name, "client_enabled", disabled=False)
    print(f"enabled client {name} in {settings.clients_file}")


def delete_client(args: argparse.Namespace) -> None:
    """Disable the client, end its live tokens, then remove it from the file (disabled first,
    so that when Redis does not answer the client stays in the file, disabled, and running the
    command again finishes the job)."""
    command, name = "delete-client", args.name
    settings = load_settings()
    change_client(command, settings, name, "client_disabled", disabled=True)
    done = f"disabled client {name} in {settings.clients_file} (not deleted yet)"
    ended = end_sessions(command, settings, name, done)
    change_client(command, settings, name, "client_deleted", delete=True)
    print(f"deleted client {name} from {settings.clients_file}; ended {ended} token(s)")


def rotate_client_secret(args: argparse.Namespace) -> None:
    """A new secret, printed once, then every live token of the client ends: whoever held the
    old secret, or a token got with it, is shut out. The secret is printed even when the tokens
    could not be ended (exit 1): the file holds its hash already, and it is the only copy."""
    command, name = "rotate-client-secret", args.name
    settings = load_settings()
    secret = new_secret()
    secret_hash = password_hasher(settings).hash(secret)
    change_client(command, settings, name, "client_secret_rotated", secret_hash=secret_hash)
    done = f"rotated the secret of client {name} in {settings.clients_file}"
    try:
        ended = end_sessions(command, settings, name, done)
    except CommandError:
        print(SECRET_LINE.format(secret))
        raise
    print(f"{done}; ended {ended} token(s)")
    print(SECRET_LINE.format(secret))


def change_client(
    command: str,
    settings: Settings,
    name: str,
    event: str,
    *,
    secret_hash: str | None = None,
    disabled: bool | None = None,
    delete: bool = False,
) -> None:
    """Change client `name` in the clients file, or CommandError (2) saying why not. The edit is
    the clients' own (a secret hash where `change_user` edits a password hash); reading, writing,
    the messages and the order (the file changes before the tokens end) are `change_record`'s."""

    def edit(client: Client) -> Client | None:
        if delete:
            return None
        if secret_hash is not None:
            client = replace(client, secret_hash=secret_hash)
        return client if disabled is None else replace(client, disabled=disabled)

    clients = FileClientStore(settings.clients_file)
    change_record(command, CLIENTS, clients, name, edit, settings, event)


def name_problem(name: str) -> str | None:
    if CLIENT_NAME_PATTERN.fullmatch(name):
        return None
    return f"{name!r} is not a valid client name; use 1 to 64 of A-Z a-z 0-9 _ . @ -"
