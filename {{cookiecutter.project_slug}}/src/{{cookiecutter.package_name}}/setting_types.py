"""What each kind of setting accepts, and how its text is read: rates, comma-separated lists,
networks, media types, claim names, a Redis URL. `settings.py` gives each setting its type; the
checks that weigh one setting against another stay there.

A list setting is read from its text here (`NoDecode`: pydantic-settings would read it as JSON):
`APP_TRUSTED_PROXIES=10.0.0.0/8, 192.168.1.7`. A ValueError says in one line what was wrong and
what is accepted; `commands.describe` puts the variable's name in front of it.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import AfterValidator, BeforeValidator, SecretStr
from pydantic_settings import NoDecode
from redis.asyncio.connection import parse_url  # what create_redis uses

from .network import IPNetwork, parse_network
from .rates import Rate

# A media type as a `typ` header writes it (RFC 6838's restricted names, with or without a
# type), and a JSON claim name as tokens use them.
MEDIA_TYPE = re.compile(r"(?:[A-Za-z0-9][\w!#$&^.+-]{0,126}/)?[A-Za-z0-9][\w!#$&^.+-]{0,126}")
CLAIM_NAME = re.compile(r"[\x21-\x7e]{1,64}")


def parse_rate(value: object) -> object:
    """`N/second`, `N/minute` or `N/hour` (`Rate.from_string` says what else is refused)."""
    return Rate.from_string(value) if isinstance(value, str) else value


def split_commas(value: object) -> object:
    """Comma-separated text, as `at+jwt, jwt`: its non-empty parts, stripped."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def split_networks(value: object) -> object:
    """Accept `10.0.0.0/8, 192.168.1.7` as well as a list. Each text is parsed here: left to
    pydantic, a bad one was two errors (IPv4, IPv6) named after its validators' internals."""
    parts = value.replace(",", " ").split() if isinstance(value, str) else value
    if isinstance(parts, (list, tuple)):
        return tuple(parse_network(part) if isinstance(part, str) else part for part in parts)
    return value


def check_media_types(value: tuple[str, ...]) -> tuple[str, ...]:
    for typ in value:
        if not MEDIA_TYPE.fullmatch(typ):
            raise ValueError(
                f"{typ[:80]!r} is not a media type; use names such as at+jwt, "
                "application/at+jwt or jwt, comma-separated"
            )
    return value


def check_claim_names(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not CLAIM_NAME.fullmatch(name):
            raise ValueError(
                f"{name[:80]!r} is not a claim name; use names such as scope or scp, "
                "comma-separated"
            )
    return value


def check_redis_url(value: str) -> str:
    """Parsed as the connection pool will parse it, so a malformed URL stops startup (or a user
    command) with one line, not a traceback at the first connection. The message never repeats
    the URL: it may hold the password."""
    try:
        parse_url(value)
    except ValueError:
        raise ValueError(
            "not a Redis URL; use redis://[:password@]host[:port][/db], rediss://... for "
            "TLS, or unix:///path/to/socket"
        ) from None
    return value


def redis_password(url: str) -> str | None:
    """The password in a Redis URL, if it has one (a malformed URL is redis-py's to report)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return None if password is None else unquote(password)


RateSetting = Annotated[Rate, NoDecode, BeforeValidator(parse_rate)]
# A secret from `secrets.token_urlsafe` never holds a comma.
Secrets = Annotated[tuple[SecretStr, ...], NoDecode, BeforeValidator(split_commas)]
MediaTypes = Annotated[
    tuple[str, ...], NoDecode, BeforeValidator(split_commas), AfterValidator(check_media_types)
]
ClaimNames = Annotated[
    tuple[str, ...], NoDecode, BeforeValidator(split_commas), AfterValidator(check_claim_names)
]
Networks = Annotated[tuple[IPNetwork, ...], NoDecode, BeforeValidator(split_networks)]
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]
