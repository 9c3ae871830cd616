"""`rotate-keys`: RS256/ES256 token keys renewed in place.

The new key pair replaces the current one, and the current public key is kept as the previous one,
so tokens signed before the rotation verify until they expire; the service signs with the new key
once restarted. Exit status: 0 when done; 2 with HS256 (no key files: the line says how to rotate
a secret by hand) or without both key files set; 1 when a key file could not be read or written.
"""

from __future__ import annotations

import argparse
from typing import Any

from .command import CommandError, load_settings

# A key file could not be read or written: the settings were right (else 2), the files were not.
KEY_FILE_FAILED = 1


def add_commands(commands: Any) -> None:
    """Add `rotate-keys` to `commands` (argparse's subparsers of the main parser)."""
    parser = commands.add_parser(
        "rotate-keys",
        help="RS256/ES256: new signing key pair; the current public key becomes the previous one",
    )
    parser.set_defaults(handler=rotate_keys)


def rotate_keys(args: argparse.Namespace) -> None:
    """RS256/ES256: a new signing key pair; the replaced public key stays as the previous one."""
    from jose.exceptions import JOSEError

    from ..auth.keys import previous_public_key_file, rotate_key_files

    unreadable_key_errors = (JOSEError, ValueError)  # python-jose could not read the public key
    command = "rotate-keys"
    settings = load_settings()
    if settings.jwt_algorithm.startswith("HS"):
        raise CommandError(
            f"{command}: {settings.jwt_algorithm} has no key files; rotate by hand: "
            "move APP_JWT_SECRET's value to APP_JWT_PREVIOUS_SECRETS, set a new APP_JWT_SECRET "
            "(python -c 'import secrets; print(secrets.token_urlsafe(48))'), restart"
        )
    private_file, public_file = settings.jwt_private_key_file, settings.jwt_public_key_file
    if private_file is None or public_file is None:  # settings already refuse this
        raise CommandError(f"{command}: both JWT key files must be set")
    try:
        new_kid, previous_kid = rotate_key_files(settings.jwt_algorithm, private_file, public_file)
    except OSError as error:
        where = error.filename or public_file.parent
        raise CommandError(f"{command}: {where}: {error.strerror}", KEY_FILE_FAILED) from None
    except unreadable_key_errors:
        raise CommandError(
            f"{command}: {public_file}: not a {settings.jwt_algorithm} public key", KEY_FILE_FAILED
        ) from None
    previous = previous_public_key_file(public_file)
    print(
        f"rotated keys: new signing key {new_kid} in {private_file} and {public_file}; "
        f"the previous public key {previous_kid} is kept in {previous} for verification; "
        "restart the service to sign with the new key"
    )
