"""The client credentials grant (RFC 6749, section 4.4) and the token endpoint's other answers,
in-process against a real Redis.

A service account authenticates with `client_secret_basic` or `client_secret_post` and gets an
access token of its own (`sub` = `client_id` = its name), no refresh token, and at most its
scopes. Each token has a session as long as it lives, so a request with it costs one Redis call
and the client commands end it at once. Refusals are RFC 6749 section 5.2 bodies; the password
grant keeps its answers and takes only the public client.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from jose import jwt
from redis import Redis

from {{ cookiecutter.package_name }} import metrics
from {{ cookiecutter.package_name }}.auth.clients import Client
from {{ cookiecutter.package_name }}.auth.passwords import password_hasher
from {{ cookiecutter.package_name }}.auth.sessions import new_refresh_token
from {{ cookiecutter.package_name }}.auth.tokens import LEEWAY_SECONDS
from {{ cookiecutter.package_name }}.keyspace import Keyspace
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings, running
from .helpers import (
    PASSWORD,
    add_client,
    add_user,
    assert_invalid_token,
    bearer,
    client_token,
    login,
)
from .redis_monitor import client_commands

pytestmark = pytest.mark.anyio

CLIENT_CREDENTIALS = {"grant_type": "client_credentials"}
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed"}
BASIC_CHALLENGE = 'Basic realm="token", charset="UTF-8"'


def basic(name: str, secret: str) -> dict[str, str]:
    """`Authorization: Basic`, each part form-urlencoded first (RFC 6749, section 2.3.1)."""
    pair = f"{quote(name, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == INVALID_CLIENT
    assert response.headers["WWW-Authenticate"] == BASIC_CHALLENGE
    assert response.headers["Cache-Control"] == "no-store"


def assert_oauth_error(response: httpx.Response, error: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert set(response.json()) == {"error", "error_description"}
    assert response.headers["Cache-Control"] == "no-store"


async def test_a_client_gets_its_own_token_with_either_method_and_no_refresh_token(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    secret = add_client(settings, "billing", scopes=["read", "write"])
    by_post = await client.post(
        "/auth/token",
        data={**CLIENT_CREDENTIALS, "client_id": "billing", "client_secret": secret},
    )
    by_basic = await client.post(
        "/auth/token", data=CLIENT_CREDENTIALS, headers=basic("billing", secret)
    )
    for response in (by_post, by_basic):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh
        assert (answer["token_type"], answer["scope"]) == ("bearer", "read write")
        assert answer["expires_in"] == settings.access_token_ttl_seconds
        assert response.headers["Cache-Control"] == "no-store"
        claims = jwt.get_unverified_claims(answer["access_token"])
        assert (claims["sub"], claims["client_id"], claims["scope"]) == ("billing",) * 2 + (
            "read write",
        )
        assert claims["iss"] == settings.jwt_issuer
        me = await client.get("/me", headers=bearer(answer["access_token"]))
        assert me.json() == {"sub": "billing", "scopes": ["read", "write"]}
        items = await client.get("/items", headers=bearer(answer["access_token"]))
        assert items.status_code == 200, items.text


async def test_scope_may_narrow_the_clients_scopes_but_never_widen_them(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    secret = add_client(settings, "reporter", scopes=["read", "write"])
    narrowed = await client_token(client, "reporter", secret, scope="read")
    assert narrowed["scope"] == "read"
    claims = jwt.get_unverified_claims(narrowed["access_token"])
    assert claims["scope"] == "read"
    refused = await client.get("/items", headers=bearer(narrowed["access_token"]))
    assert refused.status_code == 200
    write = await client.post(
        "/items", json={"text": "x"}, headers=bearer(narrowed["access_token"])
    )
    assert write.status_code == 403
    for scope in ("read admin", "admin", 'read "x', "read\twrite"):
        form = {**CLIENT_CREDENTIALS, "client_id": "reporter", "client_secret": secret}
        response = await client.post("/auth/token", data={**form, "scope": scope})
        assert_oauth_error(response, "invalid_scope")


async def test_an_unknown_client_a_wrong_secret_and_a_disabled_client_get_one_answer(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The same 401 `invalid_client` with a Basic challenge, whichever method was used, each
    counted under `auth_rejections_total{reason="client"}`."""
    secret = add_client(settings, "svc", scopes=["read"])
    off_secret = add_client(settings, "off", scopes=["read"])
    disable_by_hand(settings, "off")
    counted = metrics.AUTH_REJECTIONS.labels(reason="client")
    before = counted._value.get()
    attempts = [
        ("nobody", secret),
        ("svc", secret + "x"),
        ("svc", ""),
        ("svc", "x" * 300),  # longer than any secret: refused before hashing
        ("off", off_secret),  # disabled
        ("no such name!", secret),
    ]
    for name, presented in attempts:
        assert_invalid_client(
            await client.post(
                "/auth/token", data=CLIENT_CREDENTIALS, headers=basic(name, presented)
            )
        )
        form = {**CLIENT_CREDENTIALS, "client_id": name, "client_secret": presented}
        assert_invalid_client(await client.post("/auth/token", data=form))
    assert_invalid_client(await client.post("/auth/token", data=CLIENT_CREDENTIALS))
    assert counted._value.get() - before == 2 * len(attempts) + 1


def disable_by_hand(settings: Settings, name: str) -> None:
    """Disable a client in the file, as a hand edit (or `disable-client`, without Redis) does."""
    document = json.loads(settings.clients_file.read_text())
    document["clients"][name]["disabled"] = True
    settings.clients_file.write_text(json.dumps(document))


async def test_malformed_token_requests_get_rfc_6749_errors(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    secret = add_client(settings, "svc", scopes=["read"])
    post = {"client_id": "svc", "client_secret": secret}
    cases: list[tuple[Any, dict[str, str], str]] = [
        ({"grant_type": "authorization_code", **post}, {}, "unsupported_grant_type"),
        ({"grant_type": "x" * 64}, {}, "unsupported_grant_type"),
        # one method per request (RFC 6749, section 2.3)
        ({**CLIENT_CREDENTIALS, "client_secret": secret}, basic("svc", secret), "invalid_request"),
        ({**CLIENT_CREDENTIALS, "client_id": "other"}, basic("svc", secret), "invalid_request"),
        # a parameter twice (section 3.2)
        ({"grant_type": "refresh_token"}, {}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "not.a.token"}, {}, "invalid_grant"),
    ]
    for data, headers, error in cases:
        response = await client.post("/auth/token", data=data, headers=headers)
        assert_oauth_error(response, error)
    # A parameter twice (section 3.2), even with the same value.
    twice = urlencode([*CLIENT_CREDENTIALS.items(), *post.items(), ("client_id", "svc")])
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await client.post("/auth/token", content=twice, headers=form_type)
    assert_oauth_error(response, "invalid_request")
    # The same client id in the form and the header is one method, not two.
    same = await client.post(
        "/auth/token", data={**CLIENT_CREDENTIALS, "client_id": "svc"}, headers=basic("svc", secret)
    )
    assert same.status_code == 200, same.text
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer x"):
        response = await client.post(
            "/auth/token", data=CLIENT_CREDENTIALS, headers={"Authorization": header}
        )
        assert_invalid_client(response)
    two = [("Authorization", basic("svc", secret)["Authorization"])] * 2
    response = await client.post("/auth/token", data=CLIENT_CREDENTIALS, headers=two)
    assert_oauth_error(response, "invalid_request")


async def test_the_password_grant_keeps_its_answers_and_takes_only_the_public_client(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    add_user(settings, "alice", scopes=["read"])
    secret = add_client(settings, "svc", scopes=["read"])
    form = {"username": "alice", "password": PASSWORD}
    wrong = await client.post("/auth/token", data={**form, "password": "not it"})
    assert wrong.status_code == 401
    assert wrong.json() == {"detail": "Incorrect username or password"}
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    missing = await client.post("/auth/token", data={"password": PASSWORD})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "username"]
    public = settings.public_client_id
    accepted = [
        ({**form}, {}),
        ({**form, "grant_type": "password"}, {}),
        ({**form, "client_id": public}, {}),
        ({**form, "grant_type": "password"}, basic(public, "")),  # requests-oauthlib's habit
        ({**form, "grant_type": "password"}, basic("", "")),  # Swagger UI's, its fields blank
    ]
    for data, headers in accepted:
        response = await client.post("/auth/token", data=data, headers=headers)
        assert response.status_code == 200, (data, headers, response.text)
        claims = jwt.get_unverified_claims(response.json()["access_token"])
        assert (claims["sub"], claims["client_id"]) == ("alice", public)
    refused = [
        ({**form, "client_id": "svc"}, {}),  # a confidential client may not act for users
        ({**form, "client_id": "made-up"}, {}),  # nor may any name be written into client_id
        ({**form, "client_id": public, "client_secret": "x"}, {}),
        (form, basic("svc", secret)),
        (form, basic(public, "a secret")),
    ]
    for data, headers in refused:
        assert_invalid_client(await client.post("/auth/token", data=data, headers=headers))


async def test_the_refresh_token_grant_rotates_like_the_refresh_route(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    add_user(settings, "alice", scopes=["read"])
    pair = await login(client, "alice")
    form = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
    rotated = await client.post("/auth/token", data=form)
    assert rotated.status_code == 200, rotated.text
    assert set(rotated.json()) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert rotated.headers["Cache-Control"] == "no-store"
    assert_oauth_error(await client.post("/auth/token", data=form), "invalid_grant")  # reuse
    assert_invalid_token(await client.get("/me", headers=bearer(rotated.json()["access_token"])))


async def test_a_refresh_token_made_up_from_a_client_token_ends_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A client token's `sub` and `sid` are readable; a refresh token made from them neither
    refreshes nor ends the token (a service that was called with it could otherwise)."""
    secret = add_client(settings, "svc", scopes=["read"])
    access = (await client_token(client, "svc", secret))["access_token"]
    claims = jwt.get_unverified_claims(access)
    made_up = new_refresh_token(claims["sub"], claims["sid"])
    refused = await client.post("/auth/refresh", json={"refresh_token": made_up})
    assert_invalid_token(refused)
    form = {"grant_type": "refresh_token", "refresh_token": made_up}
    assert_oauth_error(await client.post("/auth/token", data=form), "invalid_grant")
    assert (await client.get("/me", headers=bearer(access))).status_code == 200


async def test_a_client_token_costs_exactly_one_redis_command_per_request(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Counted with MONITOR: the session check and the rate limit, one EVALSHA."""
    secret = add_client(settings, "svc", scopes=["read"])
    access = (await client_token(client, "svc", secret))["access_token"]
    assert (await client.get("/me", headers=bearer(access))).status_code == 200  # warmed up
    with client_commands(settings.redis_url) as commands:
        for _ in range(20):
            assert (await client.get("/me", headers=bearer(access))).status_code == 200
    assert commands == Counter({"EVALSHA": 20})


async def test_a_client_tokens_session_lives_no_longer_than_the_token(
    client: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    secret = add_client(settings, "svc", scopes=["read"])
    access = (await client_token(client, "svc", secret))["access_token"]
    sid = jwt.get_unverified_claims(access)["sid"]
    key = Keyspace(settings.redis_key_prefix).session("svc", sid)
    lifetime_ms = (settings.access_token_ttl_seconds + LEEWAY_SECONDS) * 1000
    assert 0 < redis.pttl(key) <= lifetime_ms
    assert (await client.get("/me", headers=bearer(access))).status_code == 200
    assert 0 < redis.pttl(key) <= lifetime_ms  # a request slides it no further
    assert redis.hget(key, "refresh") == "-"


async def test_a_clients_live_tokens_are_capped(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, redis: Redis
) -> None:
    """Beyond APP_MAX_TOKENS_PER_CLIENT, a new token ends the client's oldest."""
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", max_tokens_per_client=3
    )
    secret = add_client(settings, "svc", scopes=["read"])
    try:
        async with running(create_app(settings)) as client:
            tokens = [(await client_token(client, "svc", secret))["access_token"] for _ in range(5)]
            statuses = [
                (await client.get("/me", headers=bearer(token))).status_code for token in tokens
            ]
        assert statuses == [401, 401, 200, 200, 200]
        index = Keyspace(settings.redis_key_prefix).session_index("svc")
        assert redis.zcard(index) == 3
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)


async def test_failed_client_authentication_is_limited_per_client_and_per_address(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """APP_LOGIN_RATE_LIMIT, as for logins: failures use the budgets of the address and of the
    client; the right secret then gets 429 too, with no secret checked; successes are free."""
    settings = make_settings(
        redis_url,
        key_files,
        users_file=tmp_path / "users.json",
        login_rate_limit="3/minute",
        trusted_proxies="127.0.0.1/32",
    )
    secret = add_client(settings, "svc", scopes=["read"])
    other_secret = add_client(settings, "other", scopes=["read"])

    def from_address(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    async def attempt(name: str, presented: str, address: str) -> int:
        form = {**CLIENT_CREDENTIALS, "client_id": name, "client_secret": presented}
        response = await client.post("/auth/token", data=form, headers=from_address(address))
        if response.status_code == 429:
            assert response.headers["Retry-After"]
            assert response.headers["RateLimit-Policy"] == '"login";q=3;w=60'
        return response.status_code

    try:
        async with running(create_app(settings)) as client:
            for _ in range(5):  # successes never use the budgets up
                assert await attempt("svc", secret, "192.0.2.1") == 200
            # Per client: failures from three addresses, then the right secret from a fourth.
            statuses = [await attempt("svc", "wrong", f"192.0.2.{n}") for n in (2, 3, 4)]
            assert statuses == [401, 401, 401]
            assert await attempt("svc", secret, "192.0.2.5") == 429
            # Per address: failures against three clients, then a good one from there.
            statuses = [await attempt(name, "wrong", "198.51.100.9") for name in ("a", "b", "c")]
            assert statuses == [401, 401, 401]
            assert await attempt("other", other_secret, "198.51.100.9") == 429
            assert await attempt("other", other_secret, "198.51.100.10") == 200
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)


class ChangingClients:
    """A client store whose answer changes after the first look, as it does when a client
    command runs while a grant is checking the secret."""

    def __init__(self, first: Client, then: Client | None) -> None:
        self.answers = [first, then]

    async def get(self, name: str) -> Client | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.parametrize("change", ["disabled", "deleted", "new secret"])
async def test_a_client_changed_during_its_grant_keeps_no_token(
    settings: Settings, redis: Redis, change: str
) -> None:
    hasher = password_hasher(settings)
    first = Client(name="svc", secret_hash=hasher.hash("s3cret"), scopes=frozenset({"read"}))
    then: Client | None = None
    if change == "disabled":
        then = replace(first, disabled=True)
    elif change == "new secret":
        then = replace(first, secret_hash=hasher.hash("another"))
    async with running(create_app(settings, clients=ChangingClients(first, then))) as client:
        form = {**CLIENT_CREDENTIALS, "client_id": "svc", "client_secret": "s3cret"}
        response = await client.post("/auth/token", data=form)
    assert_invalid_client(response)
    keys = Keyspace(settings.redis_key_prefix).session_prefix("svc") + "*"
    assert list(redis.scan_iter(match=keys)) == []


async def test_a_client_named_like_a_user_gets_no_token(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A hand edit past the commands' refusal: the two would share sessions, so no token."""
    add_user(settings, "shared", scopes=["read"])
    secret = add_client(settings, "shared", scopes=["read"])
    form = {**CLIENT_CREDENTIALS, "client_id": "shared", "client_secret": secret}
    assert_invalid_client(await client.post("/auth/token", data=form))
