"""Remote issuer (resource-server mode): another party's tokens, verified with its published keys
under that issuer's claim rules (`auth/remote.py`), and a service without login routes of its own.

The issuer's key endpoint is a real HTTP server in this process (`jwks_server.py`); the app runs
in-process against the real Redis. Every test runs for RS256 and ES256 in every bake, whatever
algorithm the project was generated with. Beside this file: the settings of remote mode
(test_remote_settings.py), fetching the issuer's keys (test_remote_keys.py), tokens as identity
providers write them (test_remote_tokens.py), and a real issuing service, `serve`
(test_remote_processes.py).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from jose import jws, jwt
from redis import Redis

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import keyspace
from .helpers import (
    assert_invalid_token,
    assert_only_the_canonical_spelling_verifies,
    bearer,
    url_safe_signature,
    wait_until_ready,
)
from .issuers import SigningKey, claims_for, with_kid
from .jwks_server import KeyServer
from .remote_issuer import Build, remote_client

pytestmark = pytest.mark.anyio


async def session_token(state: Any, key: SigningKey, settings: Settings, sub: str) -> str:
    """A token of `key` for a live session of `sub` in the shared Redis (as a sibling service
    that logged `sub` in would have made)."""
    session = await state.stores.sessions.create(sub, frozenset({"read"}))
    return key.sign(claims_for(settings, sub, session.sid))


# What is mounted


async def test_no_login_routes_and_no_key_set_of_its_own(
    remote_settings: Build, key_server: KeyServer
) -> None:
    key_server.start()
    async with remote_client(remote_settings()) as (_, client):
        await wait_until_ready(client)
        assert (await client.post("/auth/token", data={"username": "a"})).status_code == 404
        assert (await client.post("/auth/refresh", json={})).status_code == 404
        assert (await client.get("/.well-known/jwks.json")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [path for path in paths if path.startswith(("/auth", "/.well-known"))]


# Claim rules


async def test_accepts_the_issuers_tokens_while_their_session_lives(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings()
    async with remote_client(settings) as (state, client):
        token = await session_token(state, issuer_key, settings, "alice")
        response = await client.get("/me", headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == {"sub": "alice", "scopes": ["read"]}
        sid = claims_of(token)["sid"]
        await state.stores.sessions.revoke("alice", sid)  # the issuer's logout, in the shared Redis
        assert_invalid_token(await client.get("/me", headers=bearer(token)))


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.get_unverified_claims(token)
    return claims


def claim_cases(now: int) -> dict[str, tuple[dict[str, Any], dict[str, Any], bool]]:
    """name: (claim changes, header changes, accepted?) for a service without sessions."""
    return {
        "typ at+jwt": ({}, {}, True),
        "typ JWT, as Keycloak, Auth0 and Entra ID send": ({}, {"typ": "JWT"}, True),
        "no scope: no scopes": ({"scope": None}, {}, True),
        "no jti": ({"jti": None}, {}, True),
        "a sub of any printable text": ({"sub": "auth0|5f7c8ec7c33c6c004bbafe82"}, {}, True),
        "aud among several": ({"aud": ["other-api", AUDIENCE]}, {}, True),
        "an ID token: aud is the client": ({"aud": "web-client"}, {"typ": "JWT"}, False),
        "typ id+jwt": ({}, {"typ": "id+jwt"}, False),
        "crit": ({}, {"crit": ["exp"]}, False),
        "another issuer": ({"iss": "https://elsewhere.example"}, {}, False),
        "expired": ({"exp": now - 60}, {}, False),
        "no exp": ({"exp": None}, {}, False),
        "no iat": ({"iat": None}, {}, False),
        "issued in the future": ({"iat": now + 600}, {}, False),
        "not yet valid": ({"nbf": now + 600}, {}, False),
        "scope as a list": ({"scope": ["read"]}, {}, True),
        "jti not a string": ({"jti": 7}, {}, False),
        "no sub": ({"sub": None}, {}, False),
        "sub with a newline": ({"sub": "a\nb"}, {}, False),
        "sub too long": ({"sub": "a" * 256}, {}, False),
    }


AUDIENCE = "{{ cookiecutter.project_slug }}"  # the default APP_JWT_AUDIENCE


async def test_claim_rules_for_a_remote_issuer(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        cases = claim_cases(int(time.time()))
        for name, (claim_changes, header_changes, accepted) in cases.items():
            claims = claims_for(settings, "someone", **claim_changes)
            token = issuer_key.sign(claims, **header_changes)
            response = await client.get("/me", headers=bearer(token))
            if accepted:
                assert response.status_code == 200, f"{name}: {response.text}"
            else:
                assert response.status_code == 401, f"{name}: {response.text}"


async def test_with_sessions_a_token_must_name_a_live_one(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings()  # APP_JWT_REQUIRE_SESSION defaults to true
    async with remote_client(settings) as (_, client):
        for claims in (
            claims_for(settings, "bob"),  # no sid at all
            claims_for(settings, "bob", secrets.token_urlsafe(16)),  # a session never opened
            claims_for(settings, "auth0|bob", secrets.token_urlsafe(16)),  # not a user name
        ):
            assert_invalid_token(await client.get("/me", headers=bearer(issuer_key.sign(claims))))


async def test_without_sessions_the_limit_is_per_subject_keyed_by_digest(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey, redis: Redis
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False, rate_limit="3/minute")
    subject, other = "auth0|{tagged}:sub", "auth0|someone-else"
    async with remote_client(settings) as (_, client):
        token = issuer_key.sign(claims_for(settings, subject))
        statuses = [(await client.get("/me", headers=bearer(token))).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        # Another token of the same subject shares the bucket; another subject has its own.
        again = issuer_key.sign(claims_for(settings, subject))
        assert (await client.get("/me", headers=bearer(again))).status_code == 429
        fresh = issuer_key.sign(claims_for(settings, other))
        assert (await client.get("/me", headers=bearer(fresh))).status_code == 200
    keys = list(redis.scan_iter(match=keyspace(settings).everything()))
    assert len(keys) == 2
    assert not [key for key in keys if "auth0" in key]  # subjects reach Redis as digests only


async def test_only_the_canonical_spelling_of_a_token_is_verified(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey, algorithm: str
) -> None:
    """As for our own tokens (test_tokens.py): each respelling gives python-jose alone the
    token's very claims, yet gets a 401, as does each malformed variant. The spelling is checked
    before any key is looked up: a respelled token naming a key nobody published costs no fetch
    (a canonical one would)."""
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        tokens = (issuer_key.sign(claims_for(settings, "henry")) for _ in range(100))
        token = next(t for t in tokens if url_safe_signature(t))
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        fetches = key_server.fetches()
        assert_invalid_token(await client.get("/me", headers=bearer(with_kid(token, "new") + "=")))
        assert key_server.fetches() == fetches
        public_key = issuer_key.jwk()
        await assert_only_the_canonical_spelling_verifies(
            client, token, lambda spelling: jws.verify(spelling, public_key, [algorithm])
        )
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
        assert key_server.fetches() == fetches
        # Control: spelled canonically, the same unknown key is worth a fetch.
        assert_invalid_token(await client.get("/me", headers=bearer(with_kid(token, "new"))))
        assert key_server.fetches() == fetches + 1
