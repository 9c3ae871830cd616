"""Command line: `python -m {{ cookiecutter.package_name }} <command>`: serve, rotate-keys, the
user commands create-user, list-users, set-password, disable-user, enable-user, delete-user, and
the service-account commands of `client_commands.py`."""

from __future__ import annotations

import argparse
import gc
import getpass
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from . import audit
from .auth.clients import FileClientStore
from .auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_hasher
from .auth.records import NameTakenError
from .auth.users import SCOPE_PATTERN, USERNAME_PATTERN, FileUserStore, User
from .client_commands import add_client_commands
from .commands import end_sessions, load_settings, print_records
from .logs import log_config, log_to_stderr
from .settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .edge_limits import EdgeLimits

# After the drain (APP_SHUTDOWN_DRAIN_SECONDS, shutdown.py): how long requests in flight may take
# to finish once the process stops accepting. compose.scale.yaml's `stop_grace_period` covers
# both, so Docker never kills a replica that is still answering.
GRACEFUL_SHUTDOWN_SECONDS = 10
# With --workers, uvicorn's parent pings each worker and replaces one that has not answered in
# this long. Its own 5 s also counts a worker's start: a CPU-starved container whose workers
# take longer than that to start replaces them for ever and never serves.
WORKER_HEALTHCHECK_SECONDS = 30
# How long an idle connection is kept open. It also bounds what a client that vanished without
# a FIN costs (a reset after its request leaves the connection here until then): 5 s is short
# enough that such connections do not pile up, and longer than the 4 s after which nginx
# (deploy/nginx.conf, `keepalive_timeout`) stops reusing a connection, so nginx never sends a
# request on one uvicorn is closing.
KEEP_ALIVE_SECONDS = 5
# prometheus-client's multiprocess mode: each worker writes its counts to files there.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; the work is done by then."""
    raise SystemExit(0)


def served_app() -> FastAPI:
    """The app as `serve` runs it, in each worker process.

    What is built by now (modules, routes, schemas, keys) lives as long as the process, so it is
    moved out of the garbage collector's sight (`gc.freeze`). A full collection then scans only
    what requests made, instead of pausing a request for tens of milliseconds.
    """
    from .main import create_app  # here, so that `create-user` does not load the web stack
    from .shutdown import drain_on_sigterm
    from .state import app_state

    app = create_app()
    state = app_state(app)
    # Now, not in `serve`: uvicorn has just installed its signal handlers, in this process.
    drain_on_sigterm(state.drain, state.settings.shutdown_drain_seconds)
    gc.collect()  # today's garbage is freed, not frozen
    gc.freeze()
    return app


def key_problem(settings: Settings) -> str | None:
    """Why the token keys cannot be loaded, in one line; checked before the workers start, which
    would otherwise each print a traceback. The message names files, never key material."""
    from jose.exceptions import JOSEError

    from .auth.keys import load_key_set

    if settings.remote_issuer:  # no keys of its own: it fetches the issuer's once running
        return None
    try:
        load_key_set(settings)
    except (JOSEError, ValueError, OSError) as error:
        return f"JWT keys: {error}"
    return None


def serve(args: argparse.Namespace) -> int:
    from .edge_limits import descriptor_problem  # here, so that user commands stay light

    settings = load_settings()
    problem = key_problem(settings) or descriptor_problem(
        edge_limits(settings), settings.redis_max_connections
    )
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    # Process managers (Docker, systemd, Kubernetes) read status 0 as a clean stop.
    signal.signal(signal.SIGTERM, exit_cleanly)
    # One process counts in memory. Several workers each write their counts to files in a
    # directory of this run only (a reused one would add an earlier run's counts), which
    # `/metrics` adds up; it is removed when `serve` exits.
    os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
    metrics_dir = tempfile.mkdtemp(prefix="prometheus-") if args.workers > 1 else None
    if metrics_dir is not None:
        os.environ[MULTIPROC_DIR_VARIABLE] = metrics_dir  # the workers inherit it
    try:
        run_uvicorn(args, settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def edge_limits(settings: Settings) -> EdgeLimits:
    from .edge_limits import EdgeLimits

    return EdgeLimits(settings.header_timeout_seconds, settings.max_connections)


def run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    from .server import bounded_protocol

    uvicorn.run(
        "{{ cookiecutter.package_name }}.cli:served_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        # Bounded header blocks, trailers, bodies, waits and connections (see server.py).
        # uvicorn calls it as it calls a protocol class.
        http=bounded_protocol(edge_limits(settings)),  # type: ignore[arg-type]
        proxy_headers=False,  # the app decides whom to believe (APP_TRUSTED_PROXIES)
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_config=log_config(settings.logs_as),  # one format for every line
        access_log=False,  # the app writes request lines itself, with their request ids
    )


def read_password(command: str) -> str | None:
    """The new password: typed twice at a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            print(f"error: {command}: the passwords do not match", file=sys.stderr)
            return None
        return password
    return sys.stdin.readline().removesuffix("\n").removesuffix("\r")


def password_problem(password: str) -> str | None:
    if not password:
        return "the password is empty (write it to stdin, e.g. from a secret manager)"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is shorter than {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password is longer than {MAX_PASSWORD_LENGTH} characters"
    return None


def create_user(args: argparse.Namespace) -> int:
    """Add a user to the file store, or update the password and scopes of an existing one."""
    name: str = args.name
    scopes = frozenset(args.scopes.split())
    if not USERNAME_PATTERN.fullmatch(name):
        print(
            f"error: create-user: {name!r} is not a valid user name; use 1 to 64 of "
            "A-Z a-z 0-9 _ . @ -",
            file=sys.stderr,
        )
        return 2
    bad_scopes = sorted(scope for scope in scopes if not SCOPE_PATTERN.fullmatch(scope))
    if bad_scopes:
        print(
            f"error: create-user: {bad_scopes[0]!r} is not a valid scope; use printable ASCII "
            "without quotes or backslashes, at most 64 characters",
            file=sys.stderr,
        )
        return 2
    settings = load_settings()
    password = read_password("create-user")
    if password is None:
        return 2
    problem = password_problem(password)
    if problem is not None:
        print(f"error: create-user: {problem}", file=sys.stderr)
        return 2
    user = User(name=name, password_hash=password_hasher(settings).hash(password), scopes=scopes)
    clients = FileClientStore(settings.clients_file)
    try:
        created = FileUserStore(settings.users_file).put(user, reserved=clients.read_all)
    except NameTakenError:
        print(
            f"error: create-user: {name!r} is a service account's name; users and clients share "
            "names (their sessions would be one)",
            file=sys.stderr,
        )
        return 2
    log_to_stderr(settings.logs_as)
    audit.event("user_created" if created else "user_updated", client="cli", sub=name)
    action = "created" if created else "updated the password and scopes of"
    listed = " ".join(sorted(scopes)) or "(none)"
    print(f"{action} user {name} in {settings.users_file}; scopes: {listed}")
    return 0


# The user commands below answer 0 when done; 2 when they changed nothing (an unknown user, bad
# input); 1 when the users file was changed but the user's sessions could not be ended (Redis did
# not answer), so the command should be run again: each of them may be repeated.


def list_users(args: argparse.Namespace) -> int:
    """Each user's name, state and scopes; never a password hash."""
    settings = load_settings()
    try:
        users = FileUserStore(settings.users_file).read_all()
    except (OSError, ValueError) as error:
        return unreadable("list-users", settings, error)
    print_records(users, settings.users_file, "users")
    return 0


def set_password(args: argparse.Namespace) -> int:
    """A new password for an existing user, read like `create-user` reads one; then every
    session of theirs ends, so whoever knew the old password is logged out."""
    command, name = "set-password", args.name
    settings = load_settings()
    try:
        known = name in FileUserStore(settings.users_file).read_all()  # before asking for one
    except (OSError, ValueError) as error:
        return unreadable(command, settings, error)
    if not known:
        return unknown_user(command, name, settings)
    password = read_password(command)
    if password is None:
        return 2
    problem = password_problem(password)
    if problem is not None:
        print(f"error: {command}: {problem}", file=sys.stderr)
        return 2
    password_hash = password_hasher(settings).hash(password)
    done = f"set a new password for user {name} in {settings.users_file}"
    return change_then_end_sessions(
        command, settings, name, "password_changed", done, password_hash=password_hash
    )


def disable_user(args: argparse.Namespace) -> int:
    """Refuse the user's logins and refreshes, then end every session of theirs."""
    command, name = "disable-user", args.name
    settings = load_settings()
    done = f"disabled user {name} in {settings.users_file}"
    return change_then_end_sessions(command, settings, name, "user_disabled", done, disabled=True)


def enable_user(args: argparse.Namespace) -> int:
    """Let a disabled user log in again (their old sessions stay ended)."""
    command, name = "enable-user", args.name
    settings = load_settings()
    status = change_user(command, settings, name, "user_enabled", disabled=False)
    if status != 0:
        return status
    print(f"enabled user {name} in {settings.users_file}")
    return 0


def delete_user(args: argparse.Namespace) -> int:
    """Disable the user, end every session of theirs, then remove them from the file.

    Disabled first, not removed first: if the sessions cannot be ended, the user stays in the
    file, disabled, and running `delete-user` again finishes the job (a user already removed
    would be unknown to it)."""
    command, name = "delete-user", args.name
    settings = load_settings()
    status = change_user(command, settings, name, "user_disabled", disabled=True)
    if status != 0:
        return status
    done = f"disabled user {name} in {settings.users_file} (not deleted yet)"
    ended = end_sessions(command, settings, name, done)
    if ended is None:
        return 1
    status = change_user(command, settings, name, "user_deleted", delete=True)
    if status != 0:
        return status
    print(f"deleted user {name} from {settings.users_file}; ended {ended} session(s)")
    return 0


def change_then_end_sessions(
    command: str,
    settings: Settings,
    name: str,
    event: str,
    done: str,
    *,
    password_hash: str | None = None,
    disabled: bool | None = None,
) -> int:
    """`change_user`, then end every session of the user; `done` says what was changed, in
    the success line and in the error line when the sessions could not be ended (1)."""
    status = change_user(
        command, settings, name, event, password_hash=password_hash, disabled=disabled
    )
    if status != 0:
        return status
    ended = end_sessions(command, settings, name, done)
    if ended is None:
        return 1
    print(f"{done}; ended {ended} session(s)")
    return 0


def change_user(
    command: str,
    settings: Settings,
    name: str,
    event: str,
    *,
    password_hash: str | None = None,
    disabled: bool | None = None,
    delete: bool = False,
) -> int:
    """Change user `name` in the users file (0), or say why not in one line (2).

    The commands that end sessions change the file first: from then on the user can neither log
    in nor refresh (both look the user up, and a login looks again once its session exists), so
    no session appears after the sessions are ended. The other order would leave a moment in
    between to log in again.
    """

    def edit(user: User) -> User | None:
        if delete:
            return None
        if password_hash is not None:
            user = replace(user, password_hash=password_hash)
        return user if disabled is None else replace(user, disabled=disabled)

    try:
        found = FileUserStore(settings.users_file).change(name, edit)
    except (OSError, ValueError) as error:
        return unreadable(command, settings, error)
    if not found:
        return unknown_user(command, name, settings)
    log_to_stderr(settings.logs_as)
    audit.event(event, client="cli", sub=name)
    return 0


def unknown_user(command: str, name: str, settings: Settings) -> int:
    print(f"error: {command}: no user named {name!r} in {settings.users_file}", file=sys.stderr)
    return 2


def unreadable(command: str, settings: Settings, error: OSError | ValueError) -> int:
    """The users file cannot be read or parsed: one line, never its content."""
    reason = error.strerror if isinstance(error, OSError) else "not a valid users file"
    print(f"error: {command}: {settings.users_file}: {reason}", file=sys.stderr)
    return 2


def rotate_keys(args: argparse.Namespace) -> int:
    """RS256/ES256: a new signing key pair; the replaced public key stays as the previous one."""
    from jose.exceptions import JOSEError

    from .auth.keys import previous_public_key_file, rotate_key_files

    unreadable_key_errors = (JOSEError, ValueError)  # python-jose could not read the public key
    settings = load_settings()
    if settings.jwt_algorithm.startswith("HS"):
        print(
            f"error: rotate-keys: {settings.jwt_algorithm} has no key files; rotate by hand: "
            "move APP_JWT_SECRET's value to APP_JWT_PREVIOUS_SECRETS, set a new APP_JWT_SECRET "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))'), restart",
            file=sys.stderr,
        )
        return 2
    private_file, public_file = settings.jwt_private_key_file, settings.jwt_public_key_file
    if private_file is None or public_file is None:  # settings already refuse this
        print("error: rotate-keys: both JWT key files must be set", file=sys.stderr)
        return 2
    try:
        new_kid, previous_kid = rotate_key_files(settings.jwt_algorithm, private_file, public_file)
    except OSError as error:
        where = error.filename or public_file.parent
        print(f"error: rotate-keys: {where}: {error.strerror}", file=sys.stderr)
        return 1
    except unreadable_key_errors:
        print(
            f"error: rotate-keys: {public_file}: not a {settings.jwt_algorithm} public key",
            file=sys.stderr,
        )
        return 1
    previous = previous_public_key_file(public_file)
    print(
        f"rotated keys: new signing key {new_kid} in {private_file} and {public_file}; "
        f"the previous public key {previous_kid} is kept in {previous} for verification; "
        "restart the service to sign with the new key"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.package_name }}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the HTTP service (uvicorn)")
    serve_parser.add_argument("--host", help="bind address (default: APP_HOST)")
    serve_parser.add_argument("--port", type=int, help="bind port (default: APP_PORT)")
    serve_parser.add_argument("--workers", type=int, default=1, help="worker processes")
    serve_parser.set_defaults(handler=serve)

    user_parser = commands.add_parser(
        "create-user", help="add a user; the password is read from stdin, never from argv"
    )
    user_parser.add_argument("name")
    user_parser.add_argument("--scopes", default="", help='space-separated, e.g. "read write"')
    user_parser.set_defaults(handler=create_user)

    list_parser = commands.add_parser("list-users", help="each user's name, state and scopes")
    list_parser.set_defaults(handler=list_users)
    for name, handler, summary in (
        (
            "set-password",
            set_password,
            "a new password, read from stdin, never from argv; ends the user's sessions",
        ),
        ("disable-user", disable_user, "refuse the user's logins and end their sessions"),
        ("enable-user", enable_user, "let a disabled user log in again"),
        ("delete-user", delete_user, "remove the user and end their sessions"),
    ):
        command_parser = commands.add_parser(name, help=summary)
        command_parser.add_argument("name")
        command_parser.set_defaults(handler=handler)

    rotate_parser = commands.add_parser(
        "rotate-keys",
        help="RS256/ES256: new signing key pair; the current public key becomes the previous one",
    )
    rotate_parser.set_defaults(handler=rotate_keys)

    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result
