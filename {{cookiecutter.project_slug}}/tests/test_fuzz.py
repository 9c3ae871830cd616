"""Property-based bad input on every route: headers, forms and JSON bodies never cause a 5xx.

One app (and its Redis pool) serves every example of this module, in-process: httpx's ASGI
transport re-raises any exception the app lets escape, so a crash fails the test with the input
that caused it (hypothesis prints it, shrunk).
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import delete_keys, make_settings, running
from .helpers import INVALID_TOKEN, add_user

pytestmark = pytest.mark.anyio

EXAMPLES = 500  # per test: 3,000 in all
FUZZ = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the project; a failure prints its (shrunk) input
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
AUTHENTICATED = [("GET", "/me"), ("POST", "/auth/logout"), ("POST", "/auth/logout-all")]
# Header values are Latin-1; control characters other than tab are not allowed in them at all.
HEADER_TEXT = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
BASE64ISH = st.text(alphabet=string.ascii_letters + string.digits + "-_=+/.", max_size=200)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
async def client(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    folder = tmp_path_factory.mktemp("fuzz")
    app_settings = make_settings(redis_url, key_files, users_file=folder / "users.json")
    add_user(app_settings, "alice", scopes=["read"])
    async with running(create_app(app_settings)) as test_client:
        yield test_client
    delete_keys(redis_url, app_settings.redis_key_prefix)


def authorization_values() -> st.SearchStrategy[str]:
    """Anything a client could put in `Authorization`, weighted toward almost-tokens."""
    segment = BASE64ISH
    jws_like = st.tuples(segment, segment, segment).map(".".join)
    many_dots = st.lists(segment, min_size=4, max_size=60).map(".".join)
    scheme = st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "", "Bearer\t"])
    token = st.one_of(
        jws_like,
        many_dots,
        st.text(HEADER_TEXT, max_size=300),
        st.text(HEADER_TEXT, min_size=4000, max_size=12000),  # around and over the size limit
        st.binary(max_size=400).map(lambda data: data.hex()),
    )
    return st.one_of(
        st.builds(lambda s, t: f"{s} {t}", scheme, token),
        st.text(HEADER_TEXT, max_size=500),
    )


def latin1(text: str) -> bytes:
    """Header bytes as sent on the wire (httpx would encode `str` values as ASCII only)."""
    return text.encode("latin-1")


def assert_no_server_error(response: httpx.Response, allowed: set[int]) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    assert response.status_code in allowed, (response.status_code, response.text)


@FUZZ
@given(route=st.sampled_from(AUTHENTICATED), authorization=authorization_values())
async def test_any_authorization_header_is_401_on_authenticated_routes(
    client: httpx.AsyncClient, route: tuple[str, str], authorization: str
) -> None:
    method, path = route
    response = await client.request(method, path, headers={b"Authorization": latin1(authorization)})
    assert_no_server_error(response, {401, 429, 503})
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"] == INVALID_TOKEN


@FUZZ
@given(
    headers=st.dictionaries(
        st.text(string.ascii_letters + "-", min_size=1, max_size=30),
        st.text(HEADER_TEXT, max_size=200),
        max_size=6,
    ),
    route=st.sampled_from([("GET", "/health/live"), ("GET", "/health/ready"), *AUTHENTICATED]),
)
async def test_arbitrary_headers_never_cause_a_server_error(
    client: httpx.AsyncClient, headers: dict[str, str], route: tuple[str, str]
) -> None:
    method, path = route
    raw = {name.encode(): latin1(value) for name, value in headers.items()}
    response = await client.request(method, path, headers=raw)
    # Names differing in case only are one header, sent twice: Authorization twice is a 400.
    several = sum(name.lower() == "authorization" for name in headers) > 1
    allowed = {200} if path.startswith("/health") else {400} if several else {401, 429, 503}
    assert_no_server_error(response, allowed | {503})


TOKEN_PARAMETERS = [
    "username",
    "password",
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "refresh_token",
    "x",
]
# What RFC 6749 (section 5.2) lets the token endpoint answer with a 400.
TOKEN_ERRORS = {"invalid_request", "invalid_grant", "invalid_scope", "unsupported_grant_type"}


@FUZZ
@given(
    form=st.dictionaries(
        st.sampled_from(TOKEN_PARAMETERS) | st.text(max_size=10),
        st.sampled_from(["password", "refresh_token", "client_credentials"])
        | st.text(max_size=300),
        max_size=5,
    ),
    forwarded_for=st.none() | st.text(HEADER_TEXT, max_size=100),
)
async def test_any_token_form_is_400_401_or_422(
    client: httpx.AsyncClient, form: dict[str, str], forwarded_for: str | None
) -> None:
    """Any form, for any grant: a refusal, and a 400 is one of RFC 6749's errors."""
    headers = {} if forwarded_for is None else {b"X-Forwarded-For": latin1(forwarded_for)}
    response = await client.post("/auth/token", data=form, headers=headers)
    assert_no_server_error(response, {400, 401, 422, 429, 503})
    if response.status_code == 400:
        assert response.json()["error"] in TOKEN_ERRORS, response.text


@FUZZ
@given(
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json",
            "text/plain",
            "multipart/form-data",
        ]
    ),
)
async def test_any_raw_login_body_is_401_or_422(
    client: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    response = await client.post(
        "/auth/token", content=body, headers={"Content-Type": content_type}
    )
    assert_no_server_error(response, {400, 401, 422, 429, 503})


@FUZZ
@given(body=JSON | st.fixed_dictionaries({"refresh_token": JSON}))
async def test_any_json_refresh_body_is_401_or_422(client: httpx.AsyncClient, body: Any) -> None:
    response = await client.post("/auth/refresh", json=body)
    assert_no_server_error(response, {401, 422, 429, 503})


@FUZZ
@given(
    token=st.one_of(
        st.text(max_size=300),
        st.tuples(BASE64ISH, BASE64ISH, BASE64ISH).map(".".join),
        st.text(string.ascii_letters + string.digits + "-_.", min_size=100, max_size=170),
    ),
    raw=st.booleans(),
)
async def test_any_refresh_token_is_401_or_422(
    client: httpx.AsyncClient, token: str, raw: bool
) -> None:
    if raw:  # not always valid JSON (nor UTF-8): hand-built text with the token inside
        body = ('{"refresh_token": "' + token + '"}').encode("utf-8", "surrogatepass")
    else:
        body = json.dumps({"refresh_token": token}).encode()
    response = await client.post(
        "/auth/refresh", content=body, headers={"Content-Type": "application/json"}
    )
    assert_no_server_error(response, {401, 422, 429, 503})
