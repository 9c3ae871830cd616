"""Requests never see each other's identity, however many run at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import delete_keys, make_settings, running
from .helpers import me

pytestmark = pytest.mark.anyio

CONCURRENT_REQUESTS = 300


@pytest.fixture
async def busy_app(redis_url: str, key_files: dict[str, Path]) -> AsyncIterator[FastAPI]:
    """An app whose Redis calls may queue for a while: 300 requests share its 64 connections
    on one event loop, and what is tested here is who gets which answer, not how fast."""
    settings = make_settings(redis_url, key_files, redis_timeout_seconds=5)
    yield create_app(settings)
    delete_keys(redis_url, settings.redis_key_prefix)


async def test_concurrent_requests_each_see_only_their_own_subject(busy_app: FastAPI) -> None:
    """Hundreds of requests in flight together, each with its own token, each get their own user."""
    async with running(busy_app) as client:
        state = app_state(busy_app)
        tokens: dict[str, str] = {}
        for number in range(CONCURRENT_REQUESTS):
            name = f"user-{number}"
            session = await state.stores.sessions.create(name, frozenset({f"scope-{number}"}))
            tokens[name] = (
                state.issuer().token_issuer.issue(name, session.sid, session.scopes).token
            )

        names = list(tokens)
        responses: list[httpx.Response] = await asyncio.gather(
            *(me(client, tokens[name]) for name in names)
        )

    for name, response in zip(names, responses, strict=True):
        assert response.status_code == 200, response.text
        scope = name.replace("user", "scope")
        assert response.json() == {"sub": name, "scopes": [scope]}
