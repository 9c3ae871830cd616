"""Remote issuer (resource-server mode): fetching the issuer's keys (`auth/remote_keys.py`).

Only the issuer's own keys verify, and only those fit for the algorithm; a new key is fetched
once for every request waiting on it; an issuer down, slow or answering garbage leaves the
service not ready at startup, and with the last good keys later; a flood of forged tokens costs
the issuer at most one fetch per 30 s. The key endpoint is a real HTTP server in this process
(`jwks_server.py`) that the tests make misbehave; the app runs in-process against the real
Redis. Every test runs for RS256 and ES256 in every bake, whatever algorithm the project was
generated with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.auth import remote_keys

from .helpers import assert_invalid_token, bearer, wait_until_ready
from .issuers import (
    SigningKey,
    bad_signature_tokens,
    claims_for,
    new_signing_key,
    random_kid_tokens,
    with_kid,
)
from .jwks_server import KeyServer
from .remote_issuer import SLOW_ISSUER_TIMEOUT_SECONDS, Build, remote_client

pytestmark = pytest.mark.anyio

JWKS_LOGGER = remote_keys.__name__


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == JWKS_LOGGER and record.levelno == level
    ]


# Keys: the issuer's only


async def test_tokens_of_a_third_key_are_refused(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey, third_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        claims = claims_for(settings, "mallory")
        assert (await client.get("/me", headers=bearer(issuer_key.sign(claims)))).status_code == 200
        for token in (third_key.sign(claims), third_key.sign(claims, kid=issuer_key.kid)):
            assert_invalid_token(await client.get("/me", headers=bearer(token)))


async def test_a_new_key_is_fetched_once_for_all_waiting_requests(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey, algorithm: str
) -> None:
    """The issuer rotates: the first tokens of its new key arrive together; one fetch serves
    them all. Then an unknown kid within 30 s costs no fetch at all."""
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        assert key_server.fetches() == 1
        new_key = new_signing_key(algorithm)
        key_server.serve(new_key.jwk(), issuer_key.jwk())
        tokens = [new_key.sign(claims_for(settings, f"user-{n}")) for n in range(40)]
        responses = await asyncio.gather(*(client.get("/me", headers=bearer(t)) for t in tokens))
        assert [response.status_code for response in responses] == [200] * len(tokens)
        assert key_server.fetches() == 2

        unknown = with_kid(tokens[0], secrets.token_urlsafe(32))
        for _ in range(20):
            assert_invalid_token(await client.get("/me", headers=bearer(unknown)))
        assert key_server.fetches() == 2


# Faults


async def test_issuer_down_at_startup_then_up(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not ready (and one clear log line) while the keys cannot be fetched; alive all along;
    ready by itself once the issuer answers."""
    settings = remote_settings(jwt_require_session=False)
    token = issuer_key.sign(claims_for(settings, "carol"))
    with caplog.at_level(logging.INFO, logger=JWKS_LOGGER):
        async with remote_client(settings) as (_, client):
            assert (await client.get("/health/ready")).status_code == 503
            assert (await client.get("/health/live")).status_code == 200
            assert_invalid_token(await client.get("/me", headers=bearer(token)))
            await asyncio.sleep(2.5)  # the background retries (1 s, 2 s) fail too
            assert (await client.get("/health/ready")).status_code == 503
            key_server.start()
            await wait_until_ready(client)
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert messages(caplog, logging.ERROR) == [
        f"JWKS: no keys from {key_server.jwks_url} (cannot connect); not ready, retrying"
    ]
    assert messages(caplog, logging.INFO) == [f"JWKS: 1 key(s) from {key_server.jwks_url}"]


async def test_issuer_down_later_keeps_the_last_good_keys(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    token = issuer_key.sign(claims_for(settings, "dave"))
    with caplog.at_level(logging.INFO, logger=JWKS_LOGGER):
        async with remote_client(settings) as (_, client):
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
            key_server.stop()
            # An unknown kid makes it fetch (and fail); the keys it had are still there.
            await client.get("/me", headers=bearer(with_kid(token, "rotated-away")))
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200
    url = key_server.jwks_url
    assert messages(caplog, logging.WARNING) == [
        f"JWKS: fetch from {url} failed (cannot connect); keeping the last good keys"
    ]


def key_set(*keys: dict[str, Any], **more: Any) -> bytes:
    return json.dumps({"keys": list(keys), **more}).encode()


def oversized(key: SigningKey) -> bytes:
    """The right key, in a document just past the cap."""
    return key_set(key.jwk(), padding="x" * remote_keys.MAX_DOCUMENT_BYTES)


# (what the endpoint answers, the reason logged)
BAD_ANSWERS: dict[str, tuple[Callable[[SigningKey], tuple[int, bytes]], str]] = {
    "not JSON": (lambda key: (200, b"<html>oops</html>"), "the answer is not JSON"),
    "not a key set": (lambda key: (200, b'{"keys": "all of them"}'), "not a JWK Set"),
    "a JSON list": (lambda key: (200, b"[1, 2, 3]"), "not a JWK Set"),
    "an empty set": (lambda key: (200, b'{"keys": []}'), "signing key in the JWK Set"),
    "a key without numbers": (
        lambda key: (200, key_set(key.jwk(n=None, x=None))),
        "signing key in the JWK Set",
    ),
    "an error status": (lambda key: (500, key_set(key.jwk())), "HTTP 500"),
    "over the size cap": (lambda key: (200, oversized(key)), "over 65536 bytes"),
}


@pytest.mark.parametrize("answer", BAD_ANSWERS)
async def test_a_bad_answer_is_no_key_set(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
    answer: str,
) -> None:
    """At startup: not ready. Later: the last good keys stay."""
    make, reason = BAD_ANSWERS[answer]
    key_server.status, key_server.body = make(issuer_key)
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    token = issuer_key.sign(claims_for(settings, "erin"))
    with caplog.at_level(logging.INFO, logger=JWKS_LOGGER):
        async with remote_client(settings) as (_, client):
            assert (await client.get("/health/ready")).status_code == 503
            assert_invalid_token(await client.get("/me", headers=bearer(token)))
        (logged,) = messages(caplog, logging.ERROR)
        assert reason in logged

        # The first app may have sent a retry (1 s after its failed fetch) just before it shut
        # down; stopping waits for the key server to be done with it, so it is not counted below.
        key_server.stop()
        key_server.serve(issuer_key.jwk())
        key_server.requests.clear()
        key_server.start()
        async with remote_client(settings) as (_, client):
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
            key_server.status, key_server.body = make(issuer_key)
            await client.get("/me", headers=bearer(with_kid(token, "new-kid")))  # a fetch
            assert key_server.fetches() == 2
            assert (await client.get("/me", headers=bearer(token))).status_code == 200
            assert (await client.get("/health/ready")).status_code == 200
    (warned,) = messages(caplog, logging.WARNING)
    assert reason in warned


async def test_a_slow_issuer_times_out(
    remote_settings: Build,
    key_server: KeyServer,
    issuer_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_server.delay_seconds = 20 * SLOW_ISSUER_TIMEOUT_SECONDS
    key_server.start()
    settings = remote_settings(jwt_jwks_timeout_seconds=SLOW_ISSUER_TIMEOUT_SECONDS)
    with caplog.at_level(logging.INFO, logger=JWKS_LOGGER):
        async with remote_client(settings) as (_, client):
            assert (await client.get("/health/ready")).status_code == 503
    (logged,) = messages(caplog, logging.ERROR)
    assert "(timed out)" in logged


async def test_keys_not_for_this_algorithm_are_ignored(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey, algorithm: str
) -> None:
    """Keys for encryption, for another algorithm, of another type, too weak or private are
    left out of the set, so their tokens are refused; the good key beside them works."""
    other_algorithm = "ES256" if algorithm == "RS256" else "RS256"
    encryption, relabelled, private = (new_signing_key(algorithm) for _ in range(3))
    other_type = new_signing_key(other_algorithm)
    published = [
        encryption.jwk(use="enc"),
        relabelled.jwk(alg=algorithm[:2] + "384"),
        other_type.jwk(alg=algorithm),  # a key of the wrong type, claiming our algorithm
        {**private.jwk(), "d": "AAAA"},  # a private key published by mistake
        issuer_key.jwk(),
    ]
    ignored = [encryption, relabelled, private]
    if algorithm == "RS256":
        weak = new_signing_key(algorithm, rsa_bits=1024)
        published.insert(0, weak.jwk())
        ignored.append(weak)
    key_server.serve(*published)
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        good = issuer_key.sign(claims_for(settings, "frank"))
        assert (await client.get("/me", headers=bearer(good))).status_code == 200
        for key in ignored:
            token = key.sign(claims_for(settings, "frank"))
            assert_invalid_token(await client.get("/me", headers=bearer(token)))


async def test_oidc_discovery_finds_the_keys_and_checks_the_issuer(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    key_server.start()
    settings = remote_settings(
        jwt_jwks_url=None, oidc_issuer=key_server.base_url, jwt_require_session=False
    )
    assert settings.jwt_issuer == key_server.base_url
    async with remote_client(settings) as (_, client):
        await wait_until_ready(client)
        token = issuer_key.sign(claims_for(settings, "grace"), typ="JWT")
        assert (await client.get("/me", headers=bearer(token))).status_code == 200
    assert key_server.requests["/.well-known/openid-configuration"] == 1

    key_server.issuer = "https://impostor.example"  # a document naming another issuer
    async with remote_client(settings) as (_, client):
        assert (await client.get("/health/ready")).status_code == 503


# Boundedness

FLOOD = 20_000  # tokens of each kind
BATCH = 500  # requests in flight together


async def test_a_flood_of_unknown_kids_and_bad_signatures_costs_one_fetch_per_30_s(
    remote_settings: Build, key_server: KeyServer, issuer_key: SigningKey
) -> None:
    """20,000 tokens with random kids and 20,000 with the right kid and bad signatures, many in
    flight at once: every one 401, and the issuer sees at most one fetch per 30 s after the
    first (counted at the key endpoint), plus the startup fetch."""
    key_server.cache_control = "max-age=86400"  # no background refresh during the flood
    key_server.start()
    settings = remote_settings(jwt_require_session=False)
    async with remote_client(settings) as (_, client):
        started = time.monotonic()
        token = issuer_key.sign(claims_for(settings, "flooder"))
        for tokens in (random_kid_tokens(token, FLOOD), bad_signature_tokens(token, FLOOD)):
            batch: list[str] = []
            for forged in tokens:
                batch.append(forged)
                if len(batch) == BATCH:
                    await all_refused(client, batch)
                    batch.clear()
        elapsed = time.monotonic() - started
        # Signed now: on a loaded machine the flood may outlast the first token's five minutes.
        fresh = issuer_key.sign(claims_for(settings, "flooder"))
        assert (await client.get("/me", headers=bearer(fresh))).status_code == 200
    allowed = 1 + 1 + int(elapsed // remote_keys.UNKNOWN_KID_INTERVAL_SECONDS)
    assert 2 <= key_server.fetches() <= allowed, (key_server.fetches(), elapsed)


async def all_refused(client: httpx.AsyncClient, tokens: list[str]) -> None:
    responses = await asyncio.gather(*(client.get("/me", headers=bearer(t)) for t in tokens))
    statuses = {response.status_code for response in responses}
    assert statuses == {401}, statuses
