"""No `Principal` outlives its request: nothing long-lived (the app, its state, a cache, a reused
exception or response) keeps a caller's identity once the answer is sent.

`Principal` has `__slots__` and no weak-reference slot, so the check walks the garbage
collector's objects instead: after the requests and a full collection, no `Principal` of this
test's users may be left. A control route that does keep them shows the check would see a leak.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }} import errors
from {{ cookiecutter.package_name }}.api.security import CurrentPrincipal
from {{ cookiecutter.package_name }}.auth.tokens import Principal
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import delete_keys, make_settings, running
from .helpers import bearer, me

pytestmark = pytest.mark.anyio

CONCURRENT = 200


@pytest.fixture
async def app(redis_url: str, key_files: dict[str, Path]) -> AsyncIterator[FastAPI]:
    settings = make_settings(redis_url, key_files, redis_timeout_seconds=5)
    app = create_app(settings)

    kept: list[Principal] = []  # lives as long as the app, like a module-level list would

    @app.get("/keep")  # the control: a route that wrongly keeps who called it
    async def keep(principal: CurrentPrincipal) -> dict[str, str]:
        kept.append(principal)
        return {"sub": principal.sub}

    yield app
    delete_keys(redis_url, settings.redis_key_prefix)


def principals_of(prefix: str) -> list[Principal]:
    """Every live `Principal` whose subject starts with `prefix`, after a full collection."""
    gc.collect()
    return [
        obj for obj in gc.get_objects() if isinstance(obj, Principal) and obj.sub.startswith(prefix)
    ]


async def tokens_for(app: FastAPI, prefix: str, count: int) -> dict[str, str]:
    state = app_state(app)
    tokens = {}
    for number in range(count):
        name = f"{prefix}{number}"
        session = await state.stores.sessions.create(name, frozenset({f"scope-{number}"}))
        tokens[name] = state.issuer().token_issuer.issue(name, session.sid, session.scopes).token
    return tokens


async def test_no_principal_outlives_its_request(app: FastAPI) -> None:
    prefix = f"refs-{secrets.token_hex(3)}-"
    async with running(app) as client:
        tokens = await tokens_for(app, prefix, CONCURRENT)
        responses: list[httpx.Response] = await asyncio.gather(
            *(me(client, token) for token in tokens.values())
        )
        assert all(response.status_code == 200 for response in responses)
        # Also the routes that end sessions.
        names = list(tokens)
        assert (
            await client.post("/auth/logout", headers=bearer(tokens[names[0]]))
        ).status_code == 204
        assert (
            await client.post("/auth/logout-all", headers=bearer(tokens[names[1]]))
        ).status_code == 204
        # And refusals raised after the token was verified: the 401's traceback holds the
        # frame that held the principal, so a reused exception object would keep it.
        for name in names[:2]:
            assert (await me(client, tokens[name])).status_code == 401
        del responses
        # The app, its pool and its state are all still alive here.
        assert principals_of(prefix) == []
    assert principals_of(prefix) == []


async def test_the_check_sees_principals_that_are_kept(app: FastAPI) -> None:
    """The control: a route that stores its principal is caught by the same check."""
    prefix = f"kept-{secrets.token_hex(3)}-"
    async with running(app) as client:
        tokens = await tokens_for(app, prefix, 5)
        for token in tokens.values():
            assert (await client.get("/keep", headers=bearer(token))).status_code == 200
        assert sorted(principal.sub for principal in principals_of(prefix)) == sorted(tokens)


@pytest.mark.parametrize(
    "make",
    [
        errors.not_authenticated,
        errors.invalid_token,
        errors.login_failed,
        lambda: errors.insufficient_scope(["write"]),
        lambda: errors.rate_limited({"Retry-After": "1"}),
        errors.service_unavailable,
    ],
    ids=["401 bare", "401 invalid_token", "401 login", "403", "429", "503"],
)
def test_every_error_answer_is_a_new_object(make: Callable[[], object]) -> None:
    """Starlette now clears a handled exception's traceback, so a shared error object would no
    longer keep frames; it would still be one mutable object (headers included) shared by all
    requests. Each call builds its own."""
    assert make() is not make()
