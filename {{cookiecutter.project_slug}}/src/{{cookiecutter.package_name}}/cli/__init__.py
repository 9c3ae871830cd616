"""Command line: `python -m {{ cookiecutter.package_name }} <command>`, one module per job:
`serve` (serve.py); the user commands create-user, list-users, set-password, disable-user,
enable-user and delete-user (users.py); the service-account commands create-client,
list-clients, disable-client, enable-client, delete-client and rotate-client-secret
(clients.py); rotate-keys (keys.py). What they share is in command.py.

A command that stops raises `CommandError`; `main` alone turns it into `error: ...` on stderr,
one line (or one per bad setting), and its exit status. A command that returns exits 0.
Argument errors are argparse's: usage and one line, status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import clients, keys, serve, users
from .command import CommandError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.package_name }}")
    commands = parser.add_subparsers(dest="command", required=True)
    for job in (serve, users, keys, clients):  # the order of `--help`
        job.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` names (default: the process's arguments); its exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except CommandError as error:
        for line in error.message.splitlines():
            print(f"error: {line}", file=sys.stderr)
        return error.status
    return 0
