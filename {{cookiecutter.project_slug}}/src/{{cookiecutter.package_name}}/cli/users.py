"""The user commands: create-user, list-users, set-password, disable-user, enable-user,
delete-user.

A password is read from stdin (typed twice at a terminal), never from the command line, where it
would land in shell history and `ps`; it is kept only as an argon2 hash, and never printed or
logged. Each command exits 0 when done; 2 when it changed nothing (an unknown user, bad input,
a users file that is missing or unreadable), with one line on stderr; 1 when the users file was
changed but the user's sessions could not be ended (Redis did not answer), so the command should
be run again: each of them may be repeated.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import replace
from typing import Any

from .. import audit
from ..auth.clients import FileClientStore
from ..auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_hasher
from ..auth.records import NameTakenError
from ..auth.users import USERNAME_PATTERN, FileUserStore, User
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
    require_record,
    scopes_problem,
    unreadable,
)

USERS = Kind(
    noun="user",
    plural="users",
    setting="APP_USERS_FILE",
    creator="create-user",
    invalid="not a valid users file",
)


def add_commands(commands: Any) -> None:
    """Add the user commands to `commands` (argparse's subparsers of the main parser)."""
    add_record_commands(
        commands,
        (
            "create-user",
            create_user,
            "add a user; the password is read from stdin, never from argv",
        ),
        ("list-users", list_users, "each user's name, state and scopes"),
        [
            (
                "set-password",
                set_password,
                "a new password, read from stdin, never from argv; ends the user's sessions",
            ),
            ("disable-user", disable_user, "refuse the user's logins and end their sessions"),
            ("enable-user", enable_user, "let a disabled user log in again"),
            ("delete-user", delete_user, "remove the user and end their sessions"),
        ],
    )


def create_user(args: argparse.Namespace) -> None:
    """Add a user to the file store, or update the password and scopes of an existing one (a
    disabled user stays disabled, and no session ends: after a leaked password, use
    `set-password`). A service account's name is refused: users and clients share names."""
    command, name = "create-user", args.name
    scopes = frozenset(args.scopes.split())
    if not USERNAME_PATTERN.fullmatch(name):
        raise CommandError(
            f"{command}: {name!r} is not a valid user name; use 1 to 64 of A-Z a-z 0-9 _ . @ -"
        )
    problem = scopes_problem(scopes)
    if problem is not None:
        raise CommandError(f"{command}: {problem}")
    settings = load_settings()
    password = read_password(command)
    user = User(name=name, password_hash=password_hasher(settings).hash(password), scopes=scopes)
    clients = FileClientStore(settings.clients_file)
    try:
        created = FileUserStore(settings.users_file).put(user, reserved=clients.read_all)
    except NameTakenError:
        raise CommandError(
            f"{command}: {name!r} is a service account's name; users and clients share names "
            "(their sessions would be one)"
        ) from None
    except (OSError, ValueError) as error:
        raise unreadable(command, USERS, settings.users_file, error) from None
    log_to_stderr(settings.logs_as)
    audit.event("user_created" if created else "user_updated", client="cli", sub=name)
    action = "created" if created else "updated the password and scopes of"
    listed = " ".join(sorted(scopes)) or "(none)"
    print(f"{action} user {name} in {settings.users_file}; scopes: {listed}")


def list_users(args: argparse.Namespace) -> None:
    """Each user's name, state and scopes; never a password hash. A users file that does not
    exist is an error (it names where it was looked for), one without users is not."""
    settings = load_settings()
    list_records("list-users", USERS, FileUserStore(settings.users_file))


def set_password(args: argparse.Namespace) -> None:
    """A new password for an existing user, read like `create-user` reads one; then every
    session of theirs ends, so whoever knew the old password is logged out."""
    command, name = "set-password", args.name
    settings = load_settings()
    require_record(command, USERS, FileUserStore(settings.users_file), name)  # before asking
    password_hash = password_hasher(settings).hash(read_password(command))
    change_user(command, settings, name, "password_changed", password_hash=password_hash)
    end_user_sessions(command, settings, name, f"set a new password for user {name}")


def disable_user(args: argparse.Namespace) -> None:
    """Refuse the user's logins and refreshes, then end every session of theirs."""
    command, name = "disable-user", args.name
    settings = load_settings()
    change_user(command, settings, name, "user_disabled", disabled=True)
    end_user_sessions(command, settings, name, f"disabled user {name}")


def enable_user(args: argparse.Namespace) -> None:
    """Let a disabled user log in again (their old sessions stay ended)."""
    command, name = "enable-user", args.name
    settings = load_settings()
    change_user(command, settings, name, "user_enabled", disabled=False)
    print(f"enabled user {name} in {settings.users_file}")


def delete_user(args: argparse.Namespace) -> None:
    """Disable the user, end every session of theirs, then remove them from the file.

    Disabled first, not removed first: if the sessions cannot be ended, the user stays in the
    file, disabled, and running `delete-user` again finishes the job (a user already removed
    would be unknown to it)."""
    command, name = "delete-user", args.name
    settings = load_settings()
    change_user(command, settings, name, "user_disabled", disabled=True)
    done = f"disabled user {name} in {settings.users_file} (not deleted yet)"
    ended = end_sessions(command, settings, name, done)
    change_user(command, settings, name, "user_deleted", delete=True)
    print(f"deleted user {name} from {settings.users_file}; ended {ended} session(s)")


def end_user_sessions(command: str, settings: Settings, name: str, done: str) -> None:
    """After `change_user`: end every session of the user; `done` says what was changed, in the
    success line and in the error line when the sessions could not be ended (1)."""
    done = f"{done} in {settings.users_file}"
    ended = end_sessions(command, settings, name, done)
    print(f"{done}; ended {ended} session(s)")


def change_user(
    command: str,
    settings: Settings,
    name: str,
    event: str,
    *,
    password_hash: str | None = None,
    disabled: bool | None = None,
    delete: bool = False,
) -> None:
    """Change user `name` in the users file, or CommandError (2) saying why not. The edit is the
    users' own (`change_client` edits a secret hash where this edits a password hash); reading,
    writing and the messages are `change_record`'s, shared with the client commands."""

    def edit(user: User) -> User | None:
        if delete:
            return None
        if password_hash is not None:
            user = replace(user, password_hash=password_hash)
        return user if disabled is None else replace(user, disabled=disabled)

    users = FileUserStore(settings.users_file)
    change_record(command, USERS, users, name, edit, settings, event)


def read_password(command: str) -> str:
    """The new password: typed twice at a terminal, else the first line of stdin; CommandError
    (2) when the two differ or it is refused (`password_problem`)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            raise CommandError(f"{command}: the passwords do not match")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    problem = password_problem(password)
    if problem is not None:
        raise CommandError(f"{command}: {problem}")
    return password


def password_problem(password: str) -> str | None:
    if not password:
        return "the password is empty (write it to stdin, e.g. from a secret manager)"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is shorter than {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is longer than {MAX_PASSWORD_LENGTH} characters"
    return None
