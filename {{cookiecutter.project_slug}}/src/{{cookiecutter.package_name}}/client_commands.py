"""The service-account commands: create-client, list-clients, disable-client, enable-client,
delete-client, rotate-client-secret. `cli.py` adds them to its parser (`add_client_commands`).

A secret is printed once, to stdout, on a line of its own (`client_secret: <secret>`), and kept
only as an argon2 hash; it is never logged. The exit status is that of the user commands: 0 when
done; 2 when nothing was changed (an unknown client, a name that is taken, bad input), with one
line on stderr; 1 when the clients file was changed but the client's tokens could not be ended
(Redis did not answer), so the command should be run again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from . import audit
from .auth.clients import CLIENT_NAME_PATTERN, Client, FileClientStore, new_secret
from .auth.passwords import password_hasher
from .auth.records import NameTakenError
from .auth.users import SCOPE_PATTERN, FileUserStore
from .commands import end_sessions, load_settings, print_records
from .logs import log_to_stderr
from .settings import Settings

SECRET_LINE = "client_secret: {}"  # noqa: S105 (a format: scripts read the new secret from it)


def add_client_commands(commands: Any) -> None:
    """Add the client commands to `commands` (argparse's subparsers of the main parser)."""
    create = commands.add_parser(
        "create-client", help="add a service account; prints its secret once"
    )
    create.add_argument("name")
    create.add_argument("--scopes", default="", help='space-separated, e.g. "read write"')
    create.set_defaults(handler=create_client)
    listing = commands.add_parser("list-clients", help="each client's name, state and scopes")
    listing.set_defaults(handler=list_clients)
    for name, handler, summary in (
        ("disable-client", disable_client, "refuse the client's tokens and end its live ones"),
        ("enable-client", enable_client, "let a disabled client get tokens again"),
        ("delete-client", delete_client, "remove the client and end its live tokens"),
        (
            "rotate-client-secret",
            rotate_client_secret,
            "a new secret, printed once; ends the client's live tokens",
        ),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument("name")
        command.set_defaults(handler=handler)


def create_client(args: argparse.Namespace) -> int:
    """Add a client with a fresh secret, printed once. A name that is a client's, a user's or
    the public client's is refused: users and clients share the subjects of tokens, and so
    their sessions (see auth/clients.py)."""
    command, name = "create-client", args.name
    scopes = frozenset(args.scopes.split())
    problem = name_problem(name) or scopes_problem(scopes)
    if problem is not None:
        return refuse(command, problem)
    settings = load_settings()
    if name == settings.public_client_id:
        return refuse(command, f"{name!r} is the public client's id (APP_PUBLIC_CLIENT_ID)")
    secret = new_secret()
    client = Client(name=name, secret_hash=password_hasher(settings).hash(secret), scopes=scopes)
    users = FileUserStore(settings.users_file)
    try:
        added = FileClientStore(settings.clients_file).add(client, reserved=users.read_all)
    except NameTakenError:
        return refuse(command, f"{name!r} is a user's name; users and clients share names")
    except (OSError, ValueError) as error:
        return unreadable(command, settings, error)
    if not added:
        return refuse(command, f"a client named {name!r} exists; rotate-client-secret renews it")
    log_to_stderr(settings.logs_as)
    audit.event("client_created", client="cli", sub=name)
    listed = " ".join(sorted(scopes)) or "(none)"
    print(f"created client {name} in {settings.clients_file}; scopes: {listed}")
    print(SECRET_LINE.format(secret))
    return 0


def list_clients(args: argparse.Namespace) -> int:
    """Each client's name, state and scopes; never a secret or its hash."""
    settings = load_settings()
    try:
        clients = FileClientStore(settings.clients_file).read_all()
    except (OSError, ValueError) as error:
        return unreadable("list-clients", settings, error)
    print_records(clients, settings.clients_file, "clients")
    return 0


def disable_client(args: argparse.Namespace) -> int:
    """Refuse the client's tokens from now on, then end every live one."""
    command, name = "disable-client", args.name
    settings = load_settings()
    status = change_client(command, settings, name, "client_disabled", disabled=True)
    if status != 0:
        return status
    return end_tokens(command, settings, name, f"disabled client {name} in {settings.clients_file}")


def enable_client(args: argparse.Namespace) -> int:
    """Let a disabled client get tokens again (its ended tokens stay ended)."""
    command, name = "enable-client", args.name
    settings = load_settings()
    status = change_client(command, settings, name, "client_enabled", disabled=False)
    if status == 0:
        print(f"enabled client {name} in {settings.clients_file}")
    return status


def delete_client(args: argparse.Namespace) -> int:
    """Disable the client, end its live tokens, then remove it from the file (disabled first,
    so that when Redis does not answer the client stays in the file, disabled, and running the
    command again finishes the job)."""
    command, name = "delete-client", args.name
    settings = load_settings()
    status = change_client(command, settings, name, "client_disabled", disabled=True)
    if status != 0:
        return status
    done = f"disabled client {name} in {settings.clients_file} (not deleted yet)"
    ended = end_sessions(command, settings, name, done)
    if ended is None:
        return 1
    status = change_client(command, settings, name, "client_deleted", delete=True)
    if status == 0:
        print(f"deleted client {name} from {settings.clients_file}; ended {ended} token(s)")
    return status


def rotate_client_secret(args: argparse.Namespace) -> int:
    """A new secret, printed once, then every live token of the client ends: whoever held the
    old secret, or a token got with it, is shut out. The secret is printed even when the tokens
    could not be ended (exit 1): the file holds its hash already, and it is the only copy."""
    command, name = "rotate-client-secret", args.name
    settings = load_settings()
    secret = new_secret()
    secret_hash = password_hasher(settings).hash(secret)
    status = change_client(
        command, settings, name, "client_secret_rotated", secret_hash=secret_hash
    )
    if status != 0:
        return status
    done = f"rotated the secret of client {name} in {settings.clients_file}"
    ended = end_sessions(command, settings, name, done)
    if ended is not None:
        print(f"{done}; ended {ended} token(s)")
    print(SECRET_LINE.format(secret))
    return 0 if ended is not None else 1


def end_tokens(command: str, settings: Settings, name: str, done: str) -> int:
    """End every live token of client `name` (its sessions); 0, or 1 when Redis did not answer."""
    ended = end_sessions(command, settings, name, done)
    if ended is None:
        return 1
    print(f"{done}; ended {ended} token(s)")
    return 0


def change_client(
    command: str,
    settings: Settings,
    name: str,
    event: str,
    *,
    secret_hash: str | None = None,
    disabled: bool | None = None,
    delete: bool = False,
) -> int:
    """Change client `name` in the clients file (0), or say why not in one line (2). The file
    changes before the tokens end, as for users: from then on the grant refuses the client (it
    looks the client up again once the new token's session is open), so no token appears
    after the live ones were ended."""

    def edit(client: Client) -> Client | None:
        if delete:
            return None
        if secret_hash is not None:
            client = replace(client, secret_hash=secret_hash)
        return client if disabled is None else replace(client, disabled=disabled)

    try:
        found = FileClientStore(settings.clients_file).change(name, edit)
    except (OSError, ValueError) as error:
        return unreadable(command, settings, error)
    if not found:
        return refuse(command, f"no client named {name!r} in {settings.clients_file}")
    log_to_stderr(settings.logs_as)
    audit.event(event, client="cli", sub=name)
    return 0


def name_problem(name: str) -> str | None:
    if CLIENT_NAME_PATTERN.fullmatch(name):
        return None
    return f"{name!r} is not a valid client name; use 1 to 64 of A-Z a-z 0-9 _ . @ -"


def scopes_problem(scopes: frozenset[str]) -> str | None:
    bad = sorted(scope for scope in scopes if not SCOPE_PATTERN.fullmatch(scope))
    if not bad:
        return None
    return (
        f"{bad[0]!r} is not a valid scope; use printable ASCII without quotes or backslashes, "
        "at most 64 characters"
    )


def refuse(command: str, problem: str) -> int:
    print(f"error: {command}: {problem}", file=sys.stderr)
    return 2


def unreadable(command: str, settings: Settings, error: OSError | ValueError) -> int:
    """A file cannot be read or parsed: one line, never its content."""
    reason = error.strerror if isinstance(error, OSError) else "not a valid clients or users file"
    filename = getattr(error, "filename", None) or settings.clients_file
    print(f"error: {command}: {filename}: {reason}", file=sys.stderr)
    return 2
