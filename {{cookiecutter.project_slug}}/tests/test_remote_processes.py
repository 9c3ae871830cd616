"""Two real services: one issues tokens (RS256 or ES256), the other verifies them remotely.

Both are `python -m {{ cookiecutter.package_name }} serve` processes on the same redis-server
and key prefix. The remote one has no keys of its own: it fetches the issuer's
`/.well-known/jwks.json`. Logging out at the issuer ends the session in the shared Redis, so the
remote service refuses the token on its very next request. These run in every bake: the
issuer's algorithm and keys are set here, not by the template's answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from jose import jwt

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .helpers import add_user, assert_invalid_token
from .issuers import REMOTE_ALGORITHMS, claims_for, new_signing_key
from .keys import write_key_pair
from .test_processes import (
    Service,
    bearer,
    environment_for,
    kill,
    start_service,
    wait_until_ready,
)

# Per hour, per subject, shared by both services (one bucket in Redis). Per hour, so a slow
# machine cannot refill a request (one per 450 s) between the last allowed one and the refusal.
RATE = 8


@dataclass
class Pair:
    settings: Settings
    algorithm: str
    issuer: Service
    remote: Service

    def new_user(self) -> str:
        name = f"user-{secrets.token_hex(4)}"
        add_user(self.settings, name, scopes=["read", "write"])
        return name


@pytest.fixture(scope="module", params=REMOTE_ALGORITHMS)
def pair(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    algorithm: str = request.param
    folder = tmp_path_factory.mktemp(f"two-services-{algorithm}")
    issuer_keys = write_key_pair(algorithm, folder)
    settings = make_settings(
        redis_url,
        issuer_keys,
        jwt_algorithm=algorithm,
        users_file=folder / "users.json",
        rate_limit=f"{RATE}/hour",
        login_rate_limit="1000/minute",
    )
    environment = environment_for(settings, redis_url, issuer_keys)
    environment["APP_JWT_ALGORITHM"] = algorithm
    issuer = start_service(environment, folder)
    services = [issuer]
    try:
        wait_until_ready(issuer)
        # The remote service: same Redis, prefix, issuer and audience; no secret, no key files.
        remote_environment = {
            name: value
            for name, value in environment.items()
            if name not in {"APP_JWT_SECRET", "APP_JWT_PRIVATE_KEY_FILE", "APP_JWT_PUBLIC_KEY_FILE"}
        }
        remote_environment["APP_JWT_JWKS_URL"] = f"{issuer.url}/.well-known/jwks.json"
        remote = start_service(remote_environment, folder)
        services.append(remote)
        wait_until_ready(remote)
        yield Pair(settings, algorithm, issuer, remote)
    finally:
        for service in services:
            kill(service)
            if service.process.stdout is not None:  # already closed unless it exited early
                service.process.stdout.close()
        delete_keys(redis_url, settings.redis_key_prefix)


def test_the_remote_service_accepts_the_issuers_tokens(pair: Pair) -> None:
    name = pair.new_user()
    token = pair.issuer.login(name)["access_token"]
    response = pair.remote.get("/me", token)
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": name, "scopes": ["read", "write"]}


def test_the_remote_service_has_no_login_and_no_keys(pair: Pair) -> None:
    response = pair.remote.post("/auth/token", data={"username": "a", "password": "b"})
    assert response.status_code == 404
    assert httpx.get(f"{pair.remote.url}/.well-known/jwks.json", timeout=10).status_code == 404


def test_tokens_of_a_third_key_are_refused(pair: Pair) -> None:
    """Right issuer, audience, user and live session; only the key is someone else's, named by
    its own kid or by the issuer's."""
    name = pair.new_user()
    real = pair.issuer.login(name)["access_token"]
    sid, issuer_kid = jwt.get_unverified_claims(real)["sid"], jwt.get_unverified_header(real)["kid"]
    third = new_signing_key(pair.algorithm)
    claims = claims_for(pair.settings, name, sid, scope="read write")
    for token in (third.sign(claims), third.sign(claims, kid=issuer_kid)):
        assert_invalid_token(pair.remote.get("/me", token))
    assert pair.remote.get("/me", real).status_code == 200


def test_logout_at_the_issuer_is_seen_by_the_remote_service_at_once(pair: Pair) -> None:
    name = pair.new_user()
    token = pair.issuer.login(name)["access_token"]
    assert pair.remote.get("/me", token).status_code == 200
    assert pair.issuer.post("/auth/logout", headers=bearer(token)).status_code == 204
    assert_invalid_token(pair.remote.get("/me", token))


def test_the_rate_limit_is_per_subject_across_both_services(pair: Pair) -> None:
    first, second = pair.new_user(), pair.new_user()
    token = pair.issuer.login(first)["access_token"]
    statuses = [pair.remote.get("/me", token).status_code for _ in range(RATE)]
    assert statuses == [200] * RATE
    refused = pair.remote.get("/me", token)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert pair.issuer.get("/me", token).status_code == 429  # one bucket for the subject
    other = pair.issuer.login(second)["access_token"]
    assert pair.remote.get("/me", other).status_code == 200
