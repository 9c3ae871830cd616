"""Tokens as identity providers write them, accepted in remote mode without weakening a check.

The shapes come from the providers' documentation (see the README's table): `typ` spelled
`JWT`, `at+jwt`, in capitals or with `application/`, or left out; times with fractions; scopes
in `scope` or `scp`, as a string or an array. Most tokens here are made by joserfc, a JOSE
library other than the one the service verifies with, so the two must agree on the format, not
only on their own habits.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.auth import remote
from {{ cookiecutter.package_name }}.auth.remote_keys import metadata_urls
from {{ cookiecutter.package_name }}.settings import Settings

from .helpers import assert_invalid_token, bearer, wait_until_ready
from .issuers import SigningKey, claims_for
from .jwks_server import KeyServer
from .remote_issuer import Build, remote_client

pytestmark = pytest.mark.anyio

AUDIENCE = "{{ cookiecutter.project_slug }}"  # the default APP_JWT_AUDIENCE


def other_library_token(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    """A JWS made by joserfc from exactly this header (`alg` and `kid` added; None drops a
    member) and these claims, serialized as they are (floats stay floats)."""
    fields = {"alg": key.algorithm, "kid": key.kid, **header}
    protected = {name: value for name, value in fields.items() if value is not None}
    imported = (RSAKey if key.algorithm == "RS256" else ECKey).import_key(key.private_pem)
    payload = json.dumps(claims, allow_nan=True).encode()
    token: str = jws.serialize_compact(protected, payload, imported, algorithms=[key.algorithm])
    return token


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/me", headers=bearer(token))


TYPES = {  # typ header -> accepted by default (at+jwt, jwt)
    "at+jwt": True,
    "AT+JWT": True,
    "application/at+jwt": True,
    "Application/AT+JWT": True,
    "JWT": True,
    "jwt": True,
    "application/jwt": True,
    "id+jwt": False,
    "text/jwt": False,  # not application/: another media type
    "application/at+jwt; charset=utf-8": False,
    "": False,
}


async def test_typ_is_compared_as_a_media_type(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """RFC 7515, section 4.1.9: without regard to case, `application/` optional."""
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        for typ, accepted in TYPES.items():
            token = other_library_token(issuer_key, claims_for(settings, "ann"), typ=typ)
            response = await me(client, token)
            assert response.status_code == (200 if accepted else 401), (typ, response.text)
        only = remote_settings(jwt_require_session=False, jwt_accepted_types="AT+JWT")
        async with remote_client(only) as (_, strict):
            token = other_library_token(issuer_key, claims_for(only, "ann"), typ="JWT")
            assert_invalid_token(await me(strict, token))
            token = other_library_token(issuer_key, claims_for(only, "ann"), typ="at+jwt")
            assert (await me(strict, token)).status_code == 200


async def test_a_token_without_typ_only_when_allowed(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """node jose's `SignJWT` writes no `typ` unless told to."""
    key_server.start()
    refusing = remote_settings(jwt_require_session=False)
    allowing = remote_settings(jwt_require_session=False, jwt_allow_missing_typ=True)
    token = other_library_token(issuer_key, claims_for(refusing, "bo"), typ=None)
    async with remote_client(refusing) as (_, client):
        assert_invalid_token(await me(client, token))
    async with remote_client(allowing) as (_, client):
        assert (await me(client, token)).status_code == 200


def time_cases(now: float) -> dict[str, tuple[dict[str, Any], bool]]:
    """name: (claim changes, accepted?)."""
    return {
        "fractions everywhere": ({"iat": now, "nbf": now - 0.5, "exp": now + 300.25}, True),
        "expired by a fraction": ({"exp": now - 11.5}, False),
        "exp true": ({"exp": True}, False),
        "exp a string": ({"exp": str(int(now) + 300)}, False),
        "exp NaN": ({"exp": float("nan")}, False),
        "exp Infinity": ({"exp": float("inf")}, False),
        "iat -Infinity": ({"iat": float("-inf")}, False),
        "nbf NaN": ({"nbf": float("nan")}, False),
        "iat null": ({"iat": None}, False),
    }


async def test_times_are_any_finite_number(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """RFC 7519, section 2: a NumericDate may have a fraction (authlib signs `time.time()`).
    JSON has no NaN or infinities, though Python's parser reads them: they are no dates."""
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        for name, (changes, accepted) in time_cases(time.time()).items():
            claims = {**claims_for(settings, "cy"), **changes}
            claims = {claim: value for claim, value in claims.items() if value is not None}
            response = await me(client, other_library_token(issuer_key, claims, typ="JWT"))
            assert response.status_code == (200 if accepted else 401), (name, response.text)


SCOPES: dict[str, tuple[dict[str, Any], list[str]]] = {  # claim changes -> /me's scopes
    "scope, a string": ({"scope": "read write"}, ["read", "write"]),
    "scope, an array": ({"scope": ["read", "write"]}, ["read", "write"]),
    "scp, a string (Entra ID)": ({"scope": None, "scp": "read write"}, ["read", "write"]),
    "scp, an array (Okta)": ({"scope": None, "scp": ["read", "write"]}, ["read", "write"]),
    "both, added up": ({"scope": "read", "scp": ["write"]}, ["read", "write"]),
    "neither": ({"scope": None}, []),
    "scope a number": ({"scope": 7}, []),
    "scp with a non-string": ({"scope": None, "scp": ["read", 7]}, []),
    "scp with a space inside one": ({"scope": "read", "scp": ["write admin"]}, ["read"]),
    "scope with a quote": ({"scope": 'read "x'}, []),
}


async def test_scopes_come_from_scope_and_scp_in_either_shape(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """A malformed scope claim gives no scopes (the token still works where none are needed)."""
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        for name, (changes, expected) in SCOPES.items():
            claims = {**claims_for(settings, "dee"), **changes}
            claims = {claim: value for claim, value in claims.items() if value is not None}
            response = await me(client, other_library_token(issuer_key, claims, typ="JWT"))
            assert response.status_code == 200, (name, response.text)
            assert sorted(response.json()["scopes"]) == expected, name


async def test_the_scope_claims_are_a_setting(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False, jwt_scope_claims="permissions")
    claims = claims_for(settings, "eve", scope="read", permissions=["items:write"])
    async with remote_client(settings) as (_, client):
        response = await me(client, other_library_token(issuer_key, claims, typ="at+jwt"))
        assert response.json()["scopes"] == ["items:write"]


Shape = tuple[dict[str, Any], str | None]


def provider_shapes(settings: Settings, now: float) -> dict[str, Shape]:
    """name: (claims, typ) of an access token as each provider documents it, for this API's
    audience (an API in the provider, with `aud` set to it) and this service's issuer."""
    base: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": AUDIENCE,
        "iat": int(now),
        "exp": int(now) + 600,
    }
    return {
        "Okta": ({**base, "sub": "00u1abcd", "cid": "0oa1client", "scp": ["read"]}, None),
        "Microsoft Entra ID": (
            {**base, "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "scp": "read"},
            "JWT",
        ),
        "Auth0": (
            {
                **base,
                "sub": "auth0|5f7c8ec7",
                "aud": [AUDIENCE, "https://tenant/userinfo"],
                "scope": "openid read",
            },
            "at+jwt",
        ),
        "Keycloak": (
            {
                **base,
                "sub": "f6a1c2b3-1111-2222-3333-444455556666",
                "typ": "Bearer",
                "azp": "web",
                "scope": "profile read",
            },
            "JWT",
        ),
        "authlib-like float times": (
            {**base, "sub": "svc", "iat": now, "exp": now + 600, "scope": "read"},
            "at+jwt",
        ),
    }


async def test_tokens_shaped_like_each_providers_are_accepted(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False, jwt_allow_missing_typ=True)
    async with remote_client(settings) as (_, client):
        for name, (claims, typ) in provider_shapes(settings, time.time()).items():
            response = await me(client, other_library_token(issuer_key, claims, typ=typ))
            assert response.status_code == 200, (name, response.text)
            assert "read" in response.json()["scopes"], name


async def test_a_token_without_a_session_is_refused_and_said_so_once_per_window(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With APP_JWT_REQUIRE_SESSION=true (the default) an identity provider's token, which names
    no `sid`, gets 401. The startup log says the setting; each refusal is counted under its own
    reason; one log line explains it, not one per request."""
    key_server.start()
    settings = remote_settings()
    counted = metrics.AUTH_REJECTIONS.labels(reason="no_session")
    before = counted._value.get()
    with caplog.at_level(logging.INFO):
        async with remote_client(settings) as (_, client):
            await wait_until_ready(client)
            for _ in range(5):
                token = other_library_token(issuer_key, claims_for(settings, "fay"), typ="JWT")
                assert_invalid_token(await me(client, token))
    assert counted._value.get() - before == 5
    lines = [record.getMessage() for record in caplog.records]
    assert any("must name a live session" in line for line in lines), lines  # at startup
    refusals = [
        record.getMessage()
        for record in caplog.records
        if record.name == remote.__name__ and record.levelno == logging.WARNING
    ]
    assert len(refusals) == 1, lines
    assert "APP_JWT_REQUIRE_SESSION=false" in refusals[0]


def test_metadata_urls_follow_both_specifications() -> None:
    assert metadata_urls("https://id.example") == (
        "https://id.example/.well-known/openid-configuration",
        "https://id.example/.well-known/oauth-authorization-server",
    )
    assert metadata_urls("https://id.example/tenant/") == (
        "https://id.example/tenant/.well-known/openid-configuration",
        "https://id.example/.well-known/oauth-authorization-server/tenant",
    )


async def test_discovery_falls_back_to_oauth_server_metadata(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """An issuer with a path and no OpenID configuration: its RFC 8414 metadata, found by path
    insertion, names the keys."""
    key_server.issuer = key_server.base_url + "/tenant"
    key_server.discovery_path = "/.well-known/oauth-authorization-server/tenant"
    key_server.start()
    settings = remote_settings(
        jwt_jwks_url=None, oidc_issuer=key_server.issuer, jwt_require_session=False
    )
    async with remote_client(settings) as (_, client):
        await wait_until_ready(client)
        token = other_library_token(issuer_key, claims_for(settings, "gus"), typ="at+jwt")
        assert (await me(client, token)).status_code == 200
    assert key_server.requests["/tenant/.well-known/openid-configuration"] == 1  # tried first
    assert key_server.requests[key_server.discovery_path] == 1
