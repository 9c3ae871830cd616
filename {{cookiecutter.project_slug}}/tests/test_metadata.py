"""The issuer's RFC 8414 metadata, judged by authlib, and authlib's OAuth client getting tokens.

authlib's validator reads an empty `response_types_supported` as a missing one. This issuer has
no authorization endpoint, so it serves no response type, and `[]` is the true answer (RFC 8414
makes the member required, not non-empty). The test runs authlib's validator as it is and
requires that one complaint and no other; then it runs every one of authlib's rules except that
one, which is replaced by RFC 8414's own reading: an empty list, with no authorization endpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from fastapi import FastAPI
from jose import jwt
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.cli.command import describe
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings, running
from .helpers import add_client, add_user, login

with warnings.catch_warnings():
    # authlib 1.9.10 and later say on import, as an "always" warning, that they prefer the
    # httpx2 package; their client works on httpx, which is what this project installs.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

pytestmark = pytest.mark.anyio

ISSUER = "https://auth.example.com"
WELL_KNOWN = "/.well-known/oauth-authorization-server"


class WithoutAuthorizationEndpoint(AuthorizationServerMetadata):  # type: ignore[misc]
    """authlib's rules, with RFC 8414's reading of `response_types_supported` for an issuer
    that has no authorization endpoint: present, a list, and then possibly empty."""

    def validate_response_types_supported(self) -> None:
        if (
            self.get("authorization_endpoint") is None
            and self.get("response_types_supported") == []
        ):
            return
        super().validate_response_types_supported()


@pytest.fixture
def issuer_settings(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> Iterator[Settings]:
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", jwt_issuer=ISSUER
    )
    yield settings
    delete_keys(redis_url, settings.redis_key_prefix)


async def metadata_of(app: FastAPI, path: str = WELL_KNOWN) -> httpx.Response:
    async with running(app) as client:
        return await client.get(path)


async def test_the_metadata_passes_authlibs_rules_but_the_empty_response_types(
    issuer_settings: Settings,
) -> None:
    response = await metadata_of(create_app(issuer_settings))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "public, max-age=300"
    document: dict[str, Any] = response.json()
    with pytest.raises(ValueError, match='"response_types_supported" is required'):
        AuthorizationServerMetadata(document).validate()
    WithoutAuthorizationEndpoint(document).validate()
    assert document["response_types_supported"] == []
    assert "authorization_endpoint" not in document
    assert document["issuer"] == ISSUER
    assert document["token_endpoint"] == f"{ISSUER}/auth/token"
    assert document["grant_types_supported"] == ["password", "refresh_token", "client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    assert document["scopes_supported"] == ["read", "write"]  # what /items checks
    if issuer_settings.jwt_algorithm == "HS256":
        assert "jwks_uri" not in document  # a shared secret is not published
    else:
        assert document["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"


async def test_every_token_names_the_issuer_url_exactly(
    issuer_settings: Settings,
) -> None:
    add_user(issuer_settings, "alice", scopes=["read"])
    secret = add_client(issuer_settings, "svc", scopes=["read"])
    async with running(create_app(issuer_settings)) as client:
        pair = await login(client, "alice")
        form = {"grant_type": "client_credentials", "client_id": "svc", "client_secret": secret}
        answer = (await client.post("/auth/token", data=form)).json()
    for token in (pair["access_token"], answer["access_token"]):
        assert jwt.get_unverified_claims(token)["iss"] == ISSUER


async def test_an_issuer_with_a_path_serves_its_metadata_where_rfc_8414_looks(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """`https://host/auth/` behind a proxy: the metadata is also at the well-known path with the
    issuer's path after it, and the issuer keeps its trailing slash, exactly as set."""
    issuer = "https://gateway.example.com/auth/"
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "u.json", jwt_issuer=issuer
    )
    app = create_app(settings)
    for path in (WELL_KNOWN, WELL_KNOWN + "/auth"):
        document = (await metadata_of(app, path)).json()
        assert document["issuer"] == issuer
        assert document["token_endpoint"] == "https://gateway.example.com/auth/auth/token"
    paths = {
        getattr(route, "path", "") for route in app.routes if getattr(route, "include_in_schema", 0)
    }
    assert WELL_KNOWN in paths
    assert WELL_KNOWN + "/auth" not in paths  # one entry in the OpenAPI document


async def test_an_issuer_that_is_no_url_serves_no_metadata(app: FastAPI) -> None:
    """The default issuer (the project slug) cannot be discovered: RFC 8414 wants a URL."""
    assert (await metadata_of(app)).status_code == 404


@pytest.mark.parametrize(
    ("issuer", "environment"),
    [
        ("http://auth.example.com", "production"),
        ("https://auth.example.com/?tenant=1", "development"),
        ("https://auth.example.com/#x", "development"),
        ("https://user:pw@auth.example.com", "development"),
        ("https:///no-host", "development"),
        ("https://auth example.com", "development"),
        ("HTTPS:auth.example.com", "development"),
    ],
)
def test_a_bad_issuer_url_is_one_line_naming_the_setting(
    redis_url: str, key_files: dict[str, Path], issuer: str, environment: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        make_settings(
            redis_url,
            key_files,
            jwt_issuer=issuer,
            environment=environment,
            jwt_secret="x" * 48 + "9f3a",
        )
    lines = describe(raised.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: APP_JWT_ISSUER: an issuer URL must be https")


async def test_authlibs_oauth_client_gets_tokens_by_either_method_and_calls_a_scoped_route(
    issuer_settings: Settings,
) -> None:
    """authlib's httpx client, as a service would use it: `fetch_token` with client credentials
    (`client_secret_basic`, then `client_secret_post`), then `/items`, which needs `read`."""
    secret = add_client(issuer_settings, "reporter", scopes=["read"])
    app = create_app(issuer_settings)
    async with running(app):  # the lifespan, for Redis
        for method in ("client_secret_basic", "client_secret_post"):
            async with AsyncOAuth2Client(
                client_id="reporter",
                client_secret=secret,
                token_endpoint_auth_method=method,
                scope="read",
                transport=httpx.ASGITransport(app=app),
                base_url="http://test",
            ) as oauth:
                token = await oauth.fetch_token(
                    "http://test/auth/token", grant_type="client_credentials"
                )
                assert token["token_type"] == "bearer"
                assert "refresh_token" not in token
                claims = jwt.get_unverified_claims(token["access_token"])
                assert (claims["sub"], claims["client_id"], claims["scope"]) == (
                    "reporter",
                    "reporter",
                    "read",
                )
                items = await oauth.get("http://test/items")
                assert items.status_code == 200, items.text
                assert items.json() == {"items": []}


async def test_authlibs_client_sees_the_rfc_6749_error_of_a_wrong_secret(
    issuer_settings: Settings,
) -> None:
    from authlib.integrations.base_client.errors import OAuthError

    add_client(issuer_settings, "reporter", scopes=["read"])
    app = create_app(issuer_settings)
    async with (
        running(app),
        AsyncOAuth2Client(
            client_id="reporter",
            client_secret="not-the-secret",
            transport=httpx.ASGITransport(app=app),
        ) as oauth,
    ):
        with pytest.raises(OAuthError) as raised:
            await oauth.fetch_token("http://test/auth/token", grant_type="client_credentials")
    assert raised.value.error == "invalid_client"
