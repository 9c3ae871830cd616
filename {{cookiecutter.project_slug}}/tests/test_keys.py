"""Key ids, the JWKS route and key rotation (the issuer side of "Tokens across services").

The expected `kid`s are computed in `tests/keys.py` from the key's numbers, independently of the
service's code; the rotation test drives the real CLI and restarts a real `serve` process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from jose import jwt

from {{ cookiecutter.package_name }}.auth.keys import thumbprint
from {{ cookiecutter.package_name }}.auth.tokens import Principal, UnknownKey
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

{% if cookiecutter.jwt_algorithm.startswith("HS") -%}
from .conftest import make_settings, running
from .helpers import add_user, login, me
from .keys import expected_kid, rfc7638_thumbprint
from .test_processes import environment_for
{%- else -%}
from .helpers import add_user, login
from .keys import expected_kid, rfc7638_thumbprint, write_key_pair
from .test_cli import serve_once
from .test_processes import environment_for, kill, start_service, wait_until_ready
{%- endif %}

pytestmark = pytest.mark.anyio

ALGORITHM: str = Settings.model_fields["jwt_algorithm"].default
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}

# RFC 7638, section 3.1: an RSA public key and its SHA-256 thumbprint.
RFC7638_KEY = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprints_follow_rfc7638() -> None:
    """The service's thumbprint, and the tests' own, give RFC 7638's example value."""
    assert thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT
    assert rfc7638_thumbprint(RFC7638_KEY) == RFC7638_THUMBPRINT


def own_kid(settings: Settings, key_files: dict[str, Path]) -> str:
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    return expected_kid(ALGORITHM, secret, key_files["public"])


async def test_every_token_names_its_key(
    client: httpx.AsyncClient, settings: Settings, key_files: dict[str, Path]
) -> None:
    """Issued and refreshed tokens carry `kid`: the RFC 7638 thumbprint (RS/ES) or the
    HMAC-derived id of the secret (HS)."""
    add_user(settings, "alice")
    pair = await login(client, "alice")
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    for token in (pair["access_token"], refreshed.json()["access_token"]):
        assert jwt.get_unverified_header(token)["kid"] == own_kid(settings, key_files)


def test_the_verifier_reports_an_unknown_kid_apart(settings: Settings) -> None:
    """`verify` tells a token naming a key it does not hold (`UnknownKey`, so a verifier of
    remote keys can refresh once) from a plainly bad one (None); a kid that is not a short
    printable string is never reported."""
    app = create_app(settings)
    issued = app_state(app).issuer().token_issuer.issue("alice", "A" * 22, ["read"]).token
    verifier = app_state(app).token_verifier
    assert isinstance(verifier.verify(issued), Principal)
    _, payload, signature = issued.split(".")

    def with_kid(kid: object, alg: str = ALGORITHM) -> str:
        fields = {"alg": alg, "typ": "at+jwt", "kid": kid}
        text = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
        return f"{text}.{payload}.{signature}"

    assert verifier.verify(with_kid("rotated-away")) == UnknownKey("rotated-away")
    assert verifier.verify(with_kid("k" * 129)) is None
    assert verifier.verify(with_kid("a kid")) is None  # not printable ASCII without spaces
    assert verifier.verify(with_kid(7)) is None
    assert verifier.verify(with_kid("rotated-away", alg="none")) is None


def rotate(environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "rotate-keys"]
    return subprocess.run(
        command, env=environment, cwd=cwd, capture_output=True, text=True, check=False
    )


{% if cookiecutter.jwt_algorithm.startswith("HS") -%}
async def test_hmac_services_publish_no_keys(client: httpx.AsyncClient) -> None:
    assert (await client.get("/.well-known/jwks.json")).status_code == 404


async def test_previous_secrets_verify_but_never_sign(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """A restart with a new APP_JWT_SECRET and the old one in APP_JWT_PREVIOUS_SECRETS keeps
    the old tokens valid and signs new ones with the new secret only; without it they fail."""
    old = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    add_user(old, "alice")
    async with running(create_app(old)) as client:
        old_token = (await login(client, "alice"))["access_token"]
    assert old.jwt_secret is not None
    values = {"redis_key_prefix": old.redis_key_prefix, "users_file": old.users_file}
    rotated = make_settings(
        redis_url, key_files, jwt_previous_secrets=old.jwt_secret.get_secret_value(), **values
    )
    async with running(create_app(rotated)) as client:
        assert (await me(client, old_token)).status_code == 200
        new_token = (await login(client, "alice"))["access_token"]
        assert jwt.get_unverified_header(new_token)["kid"] == own_kid(rotated, key_files)
        assert own_kid(rotated, key_files) != own_kid(old, key_files)
    forgotten = make_settings(redis_url, key_files, **values)
    async with running(create_app(forgotten)) as client:
        assert (await me(client, old_token)).status_code == 401


def test_rotate_keys_explains_hmac_rotation(
    settings: Settings, redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    result = rotate(environment_for(settings, redis_url, key_files), tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: rotate-keys: HS256 has no key files; rotate by hand:")
    assert "APP_JWT_PREVIOUS_SECRETS" in line
{%- else -%}
async def test_jwks_lists_the_public_key_only(
    client: httpx.AsyncClient, settings: Settings, key_files: dict[str, Path]
) -> None:
    """One public key (no rotation yet), with kty/kid/alg/use, no private member, cacheable."""
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    (key,) = response.json()["keys"]
    assert not PRIVATE_MEMBERS & set(key)
    assert key["kid"] == own_kid(settings, key_files) == rfc7638_thumbprint(key)
    assert (key["alg"], key["use"]) == (ALGORITHM, "sig")
    assert key["kty"] == ("RSA" if ALGORITHM.startswith("RS") else "EC")
    add_user(settings, "alice")
    token = (await login(client, "alice"))["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]


def test_rotate_keys_without_its_key_files_says_so(
    settings: Settings, redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    missing = {"private": tmp_path / "none.pem", "public": tmp_path / "none.pub.pem"}
    result = rotate(environment_for(settings, redis_url, missing), tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: APP_JWT_PRIVATE_KEY_FILE: cannot read")
    assert not list(tmp_path.glob("*.pem"))  # nothing written


def test_serve_refuses_a_public_key_that_is_not_the_private_keys(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """A half-finished copy of a rotated pair would sign tokens it then refuses: it stops
    `serve` with one line instead."""
    mine = write_key_pair(ALGORITHM, tmp_path)
    (tmp_path / "other").mkdir()
    other = write_key_pair(ALGORITHM, tmp_path / "other")
    mixed = {"private": mine["private"], "public": other["public"]}
    result = serve_once(environment_for(settings, redis_url, mixed), tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: JWT keys: APP_JWT_PUBLIC_KEY_FILE")
    assert "is not the public key of APP_JWT_PRIVATE_KEY_FILE" in line


def test_rotation_keeps_the_previous_key_and_drops_the_one_before(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """Through the CLI and restarts of `serve`: after one rotation, tokens of the old key still
    work and new tokens carry the new kid; after a second, the oldest key's tokens get 401.
    The JWKS lists exactly the current and the previous key."""
    key_files = write_key_pair(ALGORITHM, tmp_path)
    environment = environment_for(settings, redis_url, key_files)
    add_user(settings, "alice")
    kids = [expected_kid(ALGORITHM, "", key_files["public"])]
    tokens = []
    for rotation in range(3):
        service = start_service(environment, tmp_path)
        try:
            wait_until_ready(service)
            token = service.login("alice")["access_token"]
            assert jwt.get_unverified_header(token)["kid"] == kids[-1]
            tokens.append(token)
            published = service.get("/.well-known/jwks.json", token).json()["keys"]
            assert [key["kid"] for key in published] == kids[-2:][::-1]  # current first
            statuses = [service.get("/me", token).status_code for token in tokens]
            assert statuses == [401] * (len(tokens) - 2) + [200] * min(len(tokens), 2)
        finally:
            kill(service)
        if rotation < 2:
            result = rotate(environment, tmp_path)
            assert result.returncode == 0, result.stderr
            kids.append(expected_kid(ALGORITHM, "", key_files["public"]))
            (line,) = result.stdout.splitlines()
            assert f"new signing key {kids[-1]}" in line
            assert f"previous public key {kids[-2]}" in line
    assert key_files["private"].stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in tmp_path.glob("*.pem")) == [
        "private.pem",
        "public.pem",
        "public.previous.pem",
    ]
{%- endif %}
