"""Small helpers shared by the auth tests: users, logins, and what a 401 must look like."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from {{ cookiecutter.package_name }}.auth.passwords import password_hasher
from {{ cookiecutter.package_name }}.auth.users import FileUserStore, User
from {{ cookiecutter.package_name }}.settings import Settings

PASSWORD = "correct horse battery staple"
INVALID_TOKEN = 'Bearer error="invalid_token"'


def add_user(
    settings: Settings, name: str, scopes: Iterable[str] = (), password: str = PASSWORD
) -> None:
    """Write a user into the settings' users file, as `create-user` does."""
    password_hash = password_hasher(settings).hash(password)
    user = User(name=name, password_hash=password_hash, scopes=frozenset(scopes))
    FileUserStore(settings.users_file).put(user)


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


def assert_invalid_token(response: httpx.Response) -> None:
    """The one way this service says "no" to a token: 401, RFC 6750 header, a bland detail."""
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert response.json() == {"detail": "Invalid or expired token"}
