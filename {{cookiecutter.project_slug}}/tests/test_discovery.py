"""Two served processes, as two bakes of this template run them: an issuer whose
`APP_JWT_ISSUER` is its URL, and a second service in remote mode given only that URL
(`APP_OIDC_ISSUER`). The second finds the keys through the first's RFC 8414 metadata (it has no
OpenID configuration, so the fallback is what is tested) and takes its users' and its service
accounts' tokens; both share Redis, so ending a session at the first ends it at the second.

An HS256 issuer publishes no keys: its metadata has no `jwks_uri`, and a second service cannot
verify its tokens. It stays not ready, and says why.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .helpers import add_client, add_user, assert_invalid_token
from .keys import write_key_pair
from .redis_server import free_port
from .test_processes import Service, bearer, environment_for, kill, start_service, wait_until_ready

SECOND_READY_SECONDS = 20  # a bound for a failing test, not a speed claim
UNREADY_LINE = "the discovery document has no usable jwks_uri"


@contextmanager
def served(environment: dict[str, str], folder: Path, port: int) -> Iterator[tuple[Service, Path]]:
    """A `serve` process on `port`, its output in a file of `folder`; killed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "service.log"
    with log.open("w") as output:
        service = start_service(environment, folder, output=output, port=port)
    try:
        yield service, log
    finally:
        kill(service)


@pytest.fixture
def issuer_settings(redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    settings = make_settings(
        redis_url,
        {"private": tmp_path / "none", "public": tmp_path / "none"},
        users_file=tmp_path / "users.json",
        jwt_algorithm="HS256",
    )
    yield settings
    delete_keys(redis_url, settings.redis_key_prefix)


def environments(
    settings: Settings, redis_url: str, algorithm: str, folder: Path
) -> tuple[dict[str, str], dict[str, str], str, int]:
    """The first service's environment (issuer mode, its URL as issuer), the second's (remote
    mode, nothing but that URL), the URL and the first's port."""
    (folder / "keys").mkdir()
    keys = write_key_pair(algorithm, folder / "keys") if algorithm != "HS256" else {}
    files = keys or {"private": folder / "none", "public": folder / "none"}
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    base = environment_for(settings, redis_url, files)
    first = {**base, "APP_JWT_ALGORITHM": algorithm, "APP_JWT_ISSUER": issuer}
    second_algorithm = "RS256" if algorithm == "HS256" else algorithm
    second = {**base, "APP_JWT_ALGORITHM": second_algorithm, "APP_OIDC_ISSUER": issuer}
    return first, second, issuer, port


def command(environment: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_second_service_discovers_the_first_by_its_issuer_url_alone(
    issuer_settings: Settings, redis_url: str, tmp_path: Path, algorithm: str
) -> None:
    first_env, second_env, issuer, port = environments(
        issuer_settings, redis_url, algorithm, tmp_path
    )
    add_user(issuer_settings, "alice", scopes=["read"])
    secret = add_client(issuer_settings, "reporter", scopes=["read"])
    # The second starts once the first answers: started together, its first fetch can find no
    # one listening, and it is not ready until its retry a second later.
    with served(first_env, tmp_path / "first", port) as (first, _):
        wait_until_ready(first)
        with served(second_env, tmp_path / "second", free_port()) as (second, second_log):
            wait_until_ready(second)
            metadata = httpx.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10)
            assert metadata.json()["jwks_uri"] == f"{issuer}/.well-known/jwks.json"

            pair = first.login("alice")
            form = {"grant_type": "client_credentials"}
            client_answer = first.post("/auth/token", data=form, auth=("reporter", secret))
            assert client_answer.status_code == 200, client_answer.text
            service_token = client_answer.json()["access_token"]

            user_me = second.get("/me", pair["access_token"])
            assert user_me.json() == {"sub": "alice", "scopes": ["read"]}
            assert second.get("/items", service_token).status_code == 200
            service_me = second.get("/me", service_token)
            assert service_me.json() == {"sub": "reporter", "scopes": ["read"]}

            # One Redis: ended at the first, refused by the second on its very next request.
            logout = first.post("/auth/logout", headers=bearer(pair["access_token"]))
            assert logout.status_code == 204
            assert_invalid_token(second.get("/me", pair["access_token"]))
            command(first_env, tmp_path, "disable-client", "reporter")
            assert_invalid_token(second.get("/items", service_token))
    assert "JWKS: 1 key(s) from" in second_log.read_text()


def test_a_second_service_cannot_use_an_hs256_issuer_and_says_why(
    issuer_settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    """HS256 has no public key: the metadata names no `jwks_uri`, and the second service stays
    not ready (503 at /health/ready), logging the reason once."""
    first_env, second_env, issuer, port = environments(
        issuer_settings, redis_url, "HS256", tmp_path
    )
    with served(first_env, tmp_path / "first", port) as (first, _):
        wait_until_ready(first)
        metadata = httpx.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10)
        assert metadata.status_code == 200
        assert "jwks_uri" not in metadata.json()
        with served(second_env, tmp_path / "second", free_port()) as (second, second_log):
            deadline = time.monotonic() + SECOND_READY_SECONDS
            while UNREADY_LINE not in second_log.read_text():
                assert second.process.poll() is None, second_log.read_text()
                assert time.monotonic() < deadline, second_log.read_text()
                time.sleep(0.1)
            ready = httpx.get(f"{second.url}/health/ready", timeout=10)
            assert ready.status_code == 503
    assert second_log.read_text().count(UNREADY_LINE) == 1
