"""A remote issuer for the remote-mode tests: its signing keys, its key server, the settings of
a service that trusts it, and that service running in this process.

conftest.py registers the fixtures (`pytest_plugins`): a test that asks for one runs once per
algorithm a remote issuer may use (RS256, ES256), whatever algorithm the project was generated
with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import AppState, app_state

from .conftest import delete_keys, make_settings, running
from .issuers import REMOTE_ALGORITHMS, SigningKey, new_signing_key
from .jwks_server import KeyServer

# APP_JWT_JWKS_TIMEOUT_SECONDS in these tests: generous, as the default is. The key server is a
# thread of this process, so on a busy machine an answer can take longer than a short timeout;
# the one test about a slow issuer sets a short timeout itself.
FETCH_TIMEOUT_SECONDS = 5.0
SLOW_ISSUER_TIMEOUT_SECONDS = 0.5


@pytest.fixture(scope="module", params=REMOTE_ALGORITHMS)
def algorithm(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def issuer_key(algorithm: str) -> SigningKey:
    return new_signing_key(algorithm)


@pytest.fixture(scope="module")
def third_key(algorithm: str) -> SigningKey:
    """A key nobody published: an attacker's."""
    return new_signing_key(algorithm)


@pytest.fixture
def key_server(issuer_key: SigningKey) -> Iterator[KeyServer]:
    """The issuer's key endpoint, not yet listening: a test calls `start()` when it wants."""
    server = KeyServer()
    server.serve(issuer_key.jwk())
    try:
        yield server
    finally:
        server.stop()


Build = Callable[..., Settings]


@pytest.fixture
def remote_settings(
    redis_url: str,
    key_files: dict[str, Path],
    algorithm: str,
    key_server: KeyServer,
    tmp_path: Path,
) -> Iterator[Build]:
    """Settings of a remote-mode service: no secret and no key files of its own."""
    made: list[Settings] = []

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "jwt_algorithm": algorithm,
            "jwt_jwks_url": key_server.jwks_url,
            "jwt_jwks_timeout_seconds": FETCH_TIMEOUT_SECONDS,
            "jwt_secret": None,
            "jwt_private_key_file": None,
            "jwt_public_key_file": None,
            "users_file": tmp_path / "users.json",
            **overrides,
        }
        made.append(make_settings(redis_url, key_files, **values))
        return made[-1]

    yield build
    for settings in made:
        delete_keys(redis_url, settings.redis_key_prefix)


@asynccontextmanager
async def remote_client(settings: Settings) -> AsyncIterator[tuple[AppState, httpx.AsyncClient]]:
    """(app state, client) of a remote-mode app, its lifespan (and key refresh) running."""
    app = create_app(settings)
    async with running(app) as client:
        yield app_state(app), client
