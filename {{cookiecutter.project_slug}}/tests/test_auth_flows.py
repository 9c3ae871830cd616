"""Login, refresh, logout and scopes, end to end through HTTP against a real Redis."""

from __future__ import annotations

import json
from typing import Annotated

import argon2
import httpx
import pytest
from fastapi import Depends, FastAPI

from {{ cookiecutter.package_name }}.api.security import require_scopes
from {{ cookiecutter.package_name }}.auth.tokens import Principal
from {{ cookiecutter.package_name }}.auth.users import FileUserStore, User
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.rates import Rate
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import running
from .helpers import PASSWORD, add_user, assert_invalid_token, bearer, login, me

pytestmark = pytest.mark.anyio


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": refresh_token})


async def test_login_returns_a_working_token_pair(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """It answers a correct password with a bearer pair whose access token opens `/me`."""
    add_user(settings, "alice", scopes=["write", "read"])
    pair = await login(client, "alice")
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == settings.access_token_ttl_seconds
    response = await me(client, pair["access_token"])
    assert response.json() == {"sub": "alice", "scopes": ["read", "write"]}


async def test_unknown_user_and_wrong_password_look_the_same(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """An unknown name, a wrong password and a malformed name get byte-identical 401s."""
    add_user(settings, "alice")
    answers = [
        await client.post("/auth/token", data={"username": name, "password": password})
        for name, password in [
            ("alice", "not the password"),
            ("nobody", PASSWORD),
            ("{not a name}", PASSWORD),
        ]
    ]
    for response in answers:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json() == {"detail": "Incorrect username or password"}
    assert len({response.content for response in answers}) == 1


async def test_unknown_user_costs_a_real_password_check(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name runs one full argon2 verification with the same parameters as a known
    user's wrong password, so the two take the same time. Counted, not timed: a timing test
    fails on a busy machine."""
    add_user(settings, "alice")
    verified: list[argon2.Parameters] = []
    verify = argon2.PasswordHasher.verify

    def recording_verify(hasher: argon2.PasswordHasher, stored: str | bytes, password: str) -> bool:
        text = stored if isinstance(stored, str) else stored.decode()
        verified.append(argon2.extract_parameters(text))
        return verify(hasher, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", recording_verify)
    for name in ("alice", "nobody"):
        response = await client.post(
            "/auth/token", data={"username": name, "password": "wrong password"}
        )
        assert response.status_code == 401
    stored = FileUserStore(settings.users_file)
    alice = await stored.get("alice")
    assert alice is not None
    assert verified == [argon2.extract_parameters(alice.password_hash)] * 2


async def test_refresh_rotates_the_refresh_token(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Each refresh returns a new pair for the same session; the new refresh token works."""
    add_user(settings, "alice", scopes=["read"])
    first = await login(client, "alice")
    second = (await refresh(client, first["refresh_token"])).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await me(client, second["access_token"])).json()["scopes"] == ["read"]
    third = await refresh(client, second["refresh_token"])
    assert third.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_session(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A spent refresh token coming back is 401, and every token of that session dies with it."""
    add_user(settings, "alice")
    first = await login(client, "alice")
    other_session = await login(client, "alice")
    second = (await refresh(client, first["refresh_token"])).json()

    assert_invalid_token(await refresh(client, first["refresh_token"]))

    assert_invalid_token(await refresh(client, second["refresh_token"]))
    assert_invalid_token(await me(client, second["access_token"]))
    assert_invalid_token(await me(client, first["access_token"]))
    assert (await me(client, other_session["access_token"])).status_code == 200


async def test_a_made_up_refresh_token_for_a_live_session_ends_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The sub and sid of a session can be read from any of its access tokens; a refresh token
    made from them with a guessed secret is refused, and the session carries on."""
    add_user(settings, "alice")
    pair = await login(client, "alice")
    encoded_sub, sid, _ = pair["refresh_token"].split(".")
    forged = f"{encoded_sub}.{sid}.{'A' * 43}"
    assert_invalid_token(await refresh(client, forged))
    assert (await me(client, pair["access_token"])).status_code == 200
    assert (await refresh(client, pair["refresh_token"])).status_code == 200


async def test_a_failing_user_store_does_not_spend_the_refresh_token(settings: Settings) -> None:
    """The user is looked up before the token is rotated: when the store fails, the client
    never got a new pair, so its refresh token must still work on the retry."""
    add_user(settings, "alice")
    users = FileUserStore(settings.users_file)
    failures: list[OSError] = []

    class FlakyStore:
        async def get(self, name: str) -> User | None:
            if failures:
                raise failures.pop()
            return await users.get(name)

    async with running(create_app(settings, users=FlakyStore())) as client:
        pair = await login(client, "alice")
        failures.append(OSError("the user database is down"))
        with pytest.raises(OSError, match="down"):
            await refresh(client, pair["refresh_token"])
        assert (await refresh(client, pair["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    "refresh_token",
    [
        "",
        "garbage",
        "a.b.c",
        "YWxpY2U.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "!!!.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "e30.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "A.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x" * 4000,
    ],
    ids=[
        "empty",
        "garbage",
        "wrong shape",
        "unknown session",
        "bad base64",
        "subject that is no user name",
        "truncated base64",
        "huge",
    ],
)
async def test_refresh_refuses_bad_refresh_tokens(
    client: httpx.AsyncClient, refresh_token: str
) -> None:
    """A malformed or unknown refresh token is a plain 401, never a 5xx."""
    assert_invalid_token(await refresh(client, refresh_token))


async def test_token_answers_are_never_stored(redis_url: str, settings: Settings) -> None:
    """Every answer of the token routes, errors included, says no-store (RFC 6749, section 5.1):
    a shared cache must not keep a token pair, nor an answer about one."""
    add_user(settings, "alice")
    # One failure per minute: successes give their attempt back, the 401 below uses it up.
    limited = create_app(settings.model_copy(update={"login_rate_limit": Rate(1, 60)}))
    form = {"username": "alice", "password": PASSWORD}
    json_body = {"Content-Type": "application/json"}
    async with running(limited) as client:
        pair = await login(client, "alice")
        answers = {
            "token 200": await client.post("/auth/token", data=form),
            "token 401": await client.post("/auth/token", data={**form, "password": "wrong"}),
            "token 422": await client.post("/auth/token", data={"username": "alice"}),
            "token 429": await client.post("/auth/token", data=form),
            "refresh 200": await refresh(client, pair["refresh_token"]),
            "refresh 401": await refresh(client, "made-up"),
            "refresh 422": await client.post("/auth/refresh", json={"refresh": "x"}),
            "refresh 400": await client.post(
                "/auth/refresh", content=b'{"refresh_token": "\xff"}', headers=json_body
            ),
        }
    for name, answer in answers.items():
        assert str(answer.status_code) == name.split()[1], (name, answer.text)
        assert answer.headers.get("Cache-Control") == "no-store", name
        assert answer.headers.get("Pragma") == "no-cache", name


async def test_logout_ends_this_session_only(client: httpx.AsyncClient, settings: Settings) -> None:
    """After logout this session's access and refresh tokens fail; another session lives on."""
    add_user(settings, "alice")
    mine, other = await login(client, "alice"), await login(client, "alice")
    response = await client.post("/auth/logout", headers=bearer(mine["access_token"]))
    assert response.status_code == 204
    assert_invalid_token(await me(client, mine["access_token"]))
    assert_invalid_token(await refresh(client, mine["refresh_token"]))
    assert (await me(client, other["access_token"])).status_code == 200


async def test_logout_all_reaches_every_process(settings: Settings) -> None:
    """Logging out everywhere on one instance ends the user's sessions on another at once."""
    add_user(settings, "alice")
    add_user(settings, "bob")
    async with running(create_app(settings)) as first, running(create_app(settings)) as second:
        sessions = [await login(first, "alice"), await login(second, "alice")]
        bob = await login(first, "bob")
        for client in (first, second):
            for pair in sessions:
                assert (await me(client, pair["access_token"])).status_code == 200

        response = await second.post(
            "/auth/logout-all", headers=bearer(sessions[0]["access_token"])
        )
        assert response.status_code == 204

        for client in (first, second):
            for pair in sessions:
                assert_invalid_token(await me(client, pair["access_token"]))
                assert_invalid_token(await refresh(client, pair["refresh_token"]))
            assert (await me(client, bob["access_token"])).status_code == 200


async def test_logout_reaches_every_process(settings: Settings) -> None:
    """A logout on one instance is seen by another instance on the very next request."""
    add_user(settings, "alice")
    async with running(create_app(settings)) as first, running(create_app(settings)) as second:
        pair = await login(first, "alice")
        assert (await me(second, pair["access_token"])).status_code == 200
        await first.post("/auth/logout", headers=bearer(pair["access_token"]))
        assert_invalid_token(await me(second, pair["access_token"]))


def add_admin_route(app: FastAPI) -> None:
    @app.get("/admin")
    async def admin(
        principal: Annotated[Principal, Depends(require_scopes("admin", "read"))],
    ) -> dict[str, str]:
        return {"sub": principal.sub}


async def test_scopes_are_enforced_with_403(settings: Settings) -> None:
    """A route needing scopes answers 403 `insufficient_scope` to a token without them."""
    app = create_app(settings)
    add_admin_route(app)
    add_user(settings, "reader", scopes=["read"])
    add_user(settings, "boss", scopes=["read", "admin"])
    async with running(app) as client:
        reader = await login(client, "reader")
        response = await client.get("/admin", headers=bearer(reader["access_token"]))
        assert response.status_code == 403
        assert response.headers["WWW-Authenticate"] == (
            'Bearer error="insufficient_scope", scope="admin read"'
        )
        boss = await login(client, "boss")
        response = await client.get("/admin", headers=bearer(boss["access_token"]))
        assert response.json() == {"sub": "boss"}
        anonymous = await client.get("/admin")  # no credentials: a bare challenge
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"


async def test_users_added_while_running_can_log_in(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A user written to the users file after startup logs in without a restart."""
    add_user(settings, "alice")
    await login(client, "alice")
    response = await client.post("/auth/token", data={"username": "carol", "password": PASSWORD})
    assert response.status_code == 401
    add_user(settings, "carol", scopes=["read"])
    pair = await login(client, "carol")
    assert (await me(client, pair["access_token"])).json() == {"sub": "carol", "scopes": ["read"]}


async def test_a_changed_password_applies_while_running(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Re-running create-user with a new password retires the old one without a restart."""
    add_user(settings, "alice")
    await login(client, "alice")
    add_user(settings, "alice", password="a brand new passphrase")
    response = await client.post("/auth/token", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 401
    await login(client, "alice", password="a brand new passphrase")


def remove_user(settings: Settings, name: str) -> None:
    """Take a user out of the users file (the file store has no delete; an operator edits it)."""
    document = json.loads(settings.users_file.read_text())
    del document["users"][name]
    settings.users_file.write_text(json.dumps(document))


async def test_refresh_ends_the_session_of_a_removed_user(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A user removed since login cannot refresh, and that session ends at once."""
    add_user(settings, "alice")
    add_user(settings, "bob")
    pair = await login(client, "alice")
    remove_user(settings, "alice")
    refresh = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_invalid_token(refresh)
    assert_invalid_token(await me(client, pair["access_token"]))


async def test_refresh_drops_scopes_the_user_has_lost(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Scopes taken away since login are gone from the next access token; none are added."""
    add_user(settings, "alice", scopes=["read", "write"])
    pair = await login(client, "alice")
    add_user(settings, "alice", scopes=["read", "admin"])
    refresh = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refresh.status_code == 200
    response = await me(client, refresh.json()["access_token"])
    assert response.json() == {"sub": "alice", "scopes": ["read"]}


def test_openapi_offers_the_password_flow_on_protected_routes_only(settings: Settings) -> None:
    """Swagger UI's Authorize button needs the OAuth2 password flow in the schema, pointing at
    the login route, and on each protected route (and on no public one)."""
    schema = create_app(settings).openapi()
    assert schema["components"]["securitySchemes"] == {
        "BearerToken": {
            "type": "oauth2",
            "flows": {"password": {"scopes": {}, "tokenUrl": "auth/token"}},
        }
    }
    secured = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"BearerToken": []}]
    }
    assert secured == {
        "GET /me",
        "GET /items",
        "POST /items",
        "POST /auth/logout",
        "POST /auth/logout-all",
    }
