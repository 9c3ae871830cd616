"""Headers that must come once: `Authorization` and `X-Request-ID`, sent twice.

Which of two `Authorization` headers counts is not defined, and a proxy reading the last one
would disagree with a service reading the first about who is calling: the request is refused
with 400 (RFC 6750, section 3.1: `invalid_request`), whatever the headers hold, and no token in
it is looked at. Of two `X-Request-ID`s neither is kept: the answer and the logs carry a fresh
id. In-process first, then over real HTTP against a `serve` process.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings
from .helpers import add_user, bearer, login, me
from .test_metrics import scrape, value
from .test_processes import stop
from .test_request_logs import json_service, parse, request_lines

pytestmark = pytest.mark.anyio

INVALID_REQUEST = 'Bearer error="invalid_request"'
BOGUS = "Bearer not-a-token"
Headers = list[tuple[str, str]]


def repeated(token: str) -> dict[str, Headers]:
    """name: request headers with more than one Authorization among them."""
    valid = f"Bearer {token}"
    return {
        "valid, then bogus": [("Authorization", valid), ("Authorization", BOGUS)],
        "bogus, then valid": [("Authorization", BOGUS), ("Authorization", valid)],
        "valid twice": [("Authorization", valid), ("Authorization", valid)],
        "valid, then Basic": [("Authorization", valid), ("Authorization", "Basic YWxpY2U6eA==")],
        "valid, then empty": [("Authorization", valid), ("Authorization", "")],
        "valid, then bogus in capitals": [("Authorization", valid), ("AUTHORIZATION", BOGUS)],
        "valid three times, a header between": [
            ("Authorization", valid),
            ("Accept", "application/json"),
            ("Authorization", valid),
            ("Authorization", valid),
        ],
    }


def assert_refused_as_malformed(response: httpx.Response, name: str) -> None:
    assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
    assert response.headers["WWW-Authenticate"] == INVALID_REQUEST, name
    assert response.headers["Cache-Control"] == "no-store", name
    assert response.json() == {"detail": "More than one Authorization header"}, name


async def test_two_authorization_headers_are_a_400_never_authenticated(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """On every protected route, in either order, valid or not; counted as "duplicate", and
    nothing else is counted: no token was looked at. Logout with two copies of a valid token
    does not log out."""
    add_user(settings, "alice", scopes=["read"])
    token = (await login(client, "alice"))["access_token"]
    before = await scrape(client)
    cases = repeated(token)
    for name, headers in cases.items():
        for method, path in [("GET", "/me"), ("GET", "/items"), ("POST", "/auth/logout")]:
            response = await client.request(method, path, headers=headers)
            assert_refused_as_malformed(response, f"{method} {path}, {name}")
    after = await scrape(client)
    assert value(after, "auth_rejections_total", reason="duplicate") == (
        value(before, "auth_rejections_total", reason="duplicate") + 3 * len(cases)
    )
    for reason in ("missing", "invalid", "session", "scope"):
        assert value(after, "auth_rejections_total", reason=reason) == value(
            before, "auth_rejections_total", reason=reason
        ), reason
    assert (await me(client, token)).status_code == 200  # the session is still open


async def test_two_request_ids_give_a_fresh_one(client: httpx.AsyncClient) -> None:
    """A client's id is kept when it is the only one; of two (even equal ones), neither."""
    one = await client.get("/health/live", headers={"X-Request-ID": "only-one"})
    assert one.headers["x-request-id"] == "only-one"
    for sent in (["first-id", "second-id"], ["same-id", "same-id"], ["bad id", "good-id"]):
        response = await client.get(
            "/health/live", headers=[("X-Request-ID", request_id) for request_id in sent]
        )
        fresh = response.headers["x-request-id"]
        assert fresh not in sent, sent
        assert len(fresh) == 16, fresh
        int(fresh, 16)  # hexadecimal


def test_over_http_two_authorization_headers_are_a_400_and_two_ids_neither_kept(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """The same through uvicorn: httpx sends each header of the list as it is, and the access
    log carries the fresh id, never one the client sent twice."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    with json_service(settings, redis_url, key_files, tmp_path) as (service, log):
        token = service.login("alice")["access_token"]
        with httpx.Client(base_url=service.url, timeout=10) as http:
            answers = {
                name: http.get("/me", headers=headers) for name, headers in repeated(token).items()
            }
            alone = http.get("/me", headers=bearer(token))
            sent = [("X-Request-ID", "first-id"), ("X-Request-ID", "second-id")]
            two_ids = http.get("/health/live", headers=sent)
        output = stop(service, log)

    for name, response in answers.items():
        assert_refused_as_malformed(response, name)
    assert alone.status_code == 200, alone.text
    fresh = two_ids.headers["x-request-id"]
    assert fresh not in ("first-id", "second-id")
    (line,) = [line for line in request_lines(parse(output)) if line["path"] == "/health/live"]
    assert line["request_id"] == fresh
    assert "first-id" not in output
    assert "second-id" not in output
    assert "Traceback" not in output
