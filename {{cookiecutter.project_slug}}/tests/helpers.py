"""Small helpers shared by the auth tests: users, logins, what a 401 must look like, other
spellings of a token, a command run as an operator runs it, and the wait for an app in this
process to become ready."""

from __future__ import annotations

import string
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx

from {{ cookiecutter.package_name }}.auth.clients import Client, FileClientStore, new_secret
from {{ cookiecutter.package_name }}.auth.passwords import password_hasher
from {{ cookiecutter.package_name }}.auth.users import FileUserStore, User
from {{ cookiecutter.package_name }}.settings import Settings

PASSWORD = "correct horse battery staple"
INVALID_TOKEN = 'Bearer error="invalid_token"'
# Python 3.15 warns that a later version will drop `+` and `/` from URL-safe base64, which
# python-jose decodes with; until then the `+/` respelling still decodes to the token's bytes.
PLUS_SLASH_WARNING = r"invalid character '[+/]' in URL-safe Base64 data"
BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"  # RFC 4648 order
# How long a test waits for readiness before it fails: a ceiling, no speed claim. A short Redis
# timeout (the health tests set 0.25 s) can miss a healthy Redis on a busy machine, and a remote
# issuer's key server is a thread of the test process: readiness may take a few tries to come.
READY_WAIT_SECONDS = 30.0
READY_POLL_SECONDS = 0.1


def run_command(
    args: Iterable[str], environment: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """`python -m {{ cookiecutter.package_name }} <args>` in `cwd`, with exactly `environment`
    and `stdin` (not a terminal); what it printed and its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
        input=stdin,
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_user(
    settings: Settings, name: str, scopes: Iterable[str] = (), password: str = PASSWORD
) -> None:
    """Write a user into the settings' users file, as `create-user` does."""
    password_hash = password_hasher(settings).hash(password)
    user = User(name=name, password_hash=password_hash, scopes=frozenset(scopes))
    FileUserStore(settings.users_file).put(user)


def add_client(settings: Settings, name: str, scopes: Iterable[str] = ()) -> str:
    """Write a service account into the settings' clients file, as `create-client` does; return
    its secret."""
    secret = new_secret()
    secret_hash = password_hasher(settings).hash(secret)
    client = Client(name=name, secret_hash=secret_hash, scopes=frozenset(scopes))
    assert FileClientStore(settings.clients_file).add(client), name
    return secret


async def client_token(
    client: httpx.AsyncClient, name: str, secret: str, **form: str
) -> dict[str, Any]:
    """The client credentials grant through the API (`client_secret_post`); the answer."""
    data = {"grant_type": "client_credentials", "client_id": name, "client_secret": secret, **form}
    response = await client.post("/auth/token", data=data)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, Any]:
    """Log in through the API; return the token pair."""
    response = await client.post("/auth/token", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/me", headers=bearer(token))


async def wait_until_ready(client: httpx.AsyncClient) -> None:
    """Poll `/health/ready` of an app running in this process (`conftest.running`) until it
    answers 200. Meanwhile only 503 is an answer (not ready yet: Redis, or a remote issuer's
    keys); any other fails the test, as does waiting past `READY_WAIT_SECONDS`.

    A `serve` process has its own wait, `test_processes.wait_until_ready`: it must also tell a
    process that exited, or has not bound its port yet."""
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while (response := await client.get("/health/ready")).status_code != 200:
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, f"not ready within {READY_WAIT_SECONDS} s"
        await anyio.sleep(READY_POLL_SECONDS)


def assert_invalid_token(response: httpx.Response) -> None:
    """The one way this service says "no" to a token: 401, RFC 6750 header, a bland detail."""
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert response.json() == {"detail": "Invalid or expired token"}


def raw_bearer(token: str) -> dict[bytes, bytes]:
    """`Authorization: Bearer <token>` as bytes on the wire (httpx encodes `str` values as ASCII
    only); the service reads header values as Latin-1."""
    return {b"Authorization": f"Bearer {token}".encode("latin-1")}


def url_safe_signature(token: str) -> bool:
    """Whether the token's signature holds a `-` or `_`, so that it can be spelled with `+/`."""
    signature = token.rpartition(".")[2]
    return "-" in signature or "_" in signature


def respellings(token: str) -> dict[str, str]:
    """name: another spelling of `token` that a lenient base64url decoder (python-jose's) turns
    into the very same bytes. Only the signature is respelled: the header and payload are signed
    as they are spelled. `token` must be canonical, with `-` or `_` in its signature.

    Inserted characters come four at a time (two for a non-ASCII letter, two bytes in UTF-8),
    so the padding python-jose adds stays what the token needs."""
    assert url_safe_signature(token), token
    head, _, signature = token.rpartition(".")

    def inside(text: str) -> str:
        return f"{head}.{signature[:8]}{text}{signature[8:]}"

    spellings = {
        "padded with =": token + "=",
        "padded with ==": token + "==",
        "+/ for -_": f"{head}." + signature.translate(str.maketrans("-_", "+/")),
        "spaces and a tab inside": inside("  \t "),
        "characters outside the alphabet inside": inside("~!*$"),
        "non-ASCII letters inside": inside("éß"),
    }
    # The last character of a 2- or 3-character tail carries 4 or 2 bits that no byte uses.
    unused_bits = {2: 4, 3: 2}.get(len(signature) % 4, 0)
    last = BASE64URL.index(signature[-1])
    for bits in range(1, 2**unused_bits):
        other = BASE64URL[last | bits]
        spellings[f"last character {other} for {signature[-1]}"] = f"{head}.{signature[:-1]}{other}"
    return spellings


def misspellings(token: str) -> dict[str, str]:
    """name: a malformed variant of `token`, no JWS in compact serialization at all."""
    head, _, signature = token.rpartition(".")
    header, _, payload = head.partition(".")
    return {
        "= inside the signature": f"{head}.{signature[:8]}={signature[8:]}",
        "= inside the header": f"{header[:4]}={header[4:]}.{payload}.{signature}",
        "a space inside the payload": f"{header}.{payload[:4]} {payload[4:]}.{signature}",
        "a trailing dot": token + ".",
        "a fourth segment": f"{token}.{signature}",
        "an empty payload": f"{header}..{signature}",
        "an empty signature": f"{head}.",
        "a signature of 4n+1 characters": token + "A" * ((1 - len(signature)) % 4),
        "a non-ASCII letter for a letter": f"{head}.{signature[:-1]}Ä",
    }


async def assert_only_the_canonical_spelling_verifies(
    client: httpx.AsyncClient, token: str, verify: Callable[[str], bytes]
) -> None:
    """Each respelling of `token` gives `verify` (python-jose alone, with the right key) the very
    payload of `token`, so nothing but the spelling check stands in its way; yet it gets a 401 at
    `/me`, and so does each malformed variant."""
    payload = verify(token)
    for name, spelling in respellings(token).items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", PLUS_SLASH_WARNING, FutureWarning)
            assert verify(spelling) == payload, name
        response = await client.get("/me", headers=raw_bearer(spelling))
        assert response.status_code == 401, f"{name}: {response.text}"
        assert_invalid_token(response)
    for name, spelling in misspellings(token).items():
        response = await client.get("/me", headers=raw_bearer(spelling))
        assert response.status_code == 401, f"{name}: {response.text}"
        assert_invalid_token(response)
