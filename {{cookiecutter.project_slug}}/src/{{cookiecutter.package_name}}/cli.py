"""Command line: `python -m {{ cookiecutter.package_name }} serve | create-user | rotate-keys`."""

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
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError

from . import audit
from .auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, password_hasher
from .auth.users import SCOPE_PATTERN, USERNAME_PATTERN, FileUserStore, User
from .logs import log_config, log_to_stderr
from .settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

GRACEFUL_SHUTDOWN_SECONDS = 10
# How long an idle connection is kept open. It also bounds what a client that vanished without
# a FIN costs (a reset after its request leaves the connection here until then): 5 s is short
# enough that such connections do not pile up, and longer than the 4 s after which nginx
# (deploy/nginx.conf, `keepalive_timeout`) stops reusing a connection, so nginx never sends a
# request on one uvicorn is closing.
KEEP_ALIVE_SECONDS = 5
# prometheus-client's multiprocess mode: each worker writes its counts to files there.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


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

    app = create_app()
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
    settings = load_settings()
    problem = key_problem(settings)
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


def run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    from .server import BoundedHttpToolsProtocol

    uvicorn.run(
        "{{ cookiecutter.package_name }}.cli:served_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        http=BoundedHttpToolsProtocol,  # header blocks and bodies of bounded size
        proxy_headers=False,  # the app decides whom to believe (APP_TRUSTED_PROXIES)
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_config=log_config(settings.logs_as),  # one format for every line
        access_log=False,  # the app writes request lines itself, with their request ids
    )


def read_password() -> str | None:
    """The new password: typed twice at a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat it: ") != password:
            print("error: create-user: the passwords do not match", file=sys.stderr)
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
    password = read_password()
    if password is None:
        return 2
    problem = password_problem(password)
    if problem is not None:
        print(f"error: create-user: {problem}", file=sys.stderr)
        return 2
    user = User(name=name, password_hash=password_hasher(settings).hash(password), scopes=scopes)
    created = FileUserStore(settings.users_file).put(user)
    log_to_stderr(settings.logs_as)
    audit.event("user_created" if created else "user_updated", client="cli", sub=name)
    action = "created" if created else "updated the password and scopes of"
    listed = " ".join(sorted(scopes)) or "(none)"
    print(f"{action} user {name} in {settings.users_file}; scopes: {listed}")
    return 0


def rotate_keys(args: argparse.Namespace) -> int:
    """RS256/ES256: a new signing key pair; the replaced public key stays as the previous one."""
    from jose.exceptions import JOSEError

    from .auth.keys import previous_public_key_file, rotate_key_files

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
    except (JOSEError, ValueError):  # python-jose could not read the current public key
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

    rotate_parser = commands.add_parser(
        "rotate-keys",
        help="RS256/ES256: new signing key pair; the current public key becomes the previous one",
    )
    rotate_parser.set_defaults(handler=rotate_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result
