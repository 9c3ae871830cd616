"""`GET /.well-known/oauth-authorization-server`: this issuer's metadata (RFC 8414).

Served when `APP_JWT_ISSUER` is a URL (`Settings.issuer_url`): an OAuth client, or a second
service with `APP_OIDC_ISSUER`, then finds the token endpoint and the keys from the issuer URL
alone. With an opaque issuer name (the default, the project slug) there is nothing to serve:
RFC 8414 makes `issuer` an https URL, and every URL in the document is built from it.

What the document says, and why:

- `issuer` is `APP_JWT_ISSUER` exactly, as every token's `iss` is; `token_endpoint` and
  `jwks_uri` are built from it (`<issuer>/auth/token`, `<issuer>/.well-known/jwks.json`), so
  behind a proxy the issuer is the public base URL the proxy serves this service at.
- `jwks_uri` only with RS256/ES256: an HS256 issuer has no public key to publish, and only
  services holding its secret can verify its tokens.
- `grant_types_supported`: password, refresh_token, client_credentials (all at the token
  endpoint); `token_endpoint_auth_methods_supported`: client_secret_basic and client_secret_post
  for service accounts, `none` for the public client of the password grant.
- `response_types_supported` is `[]`: response types are what an authorization endpoint
  answers, and this issuer has none. RFC 8414 makes the member required, so it is there, empty,
  rather than naming a response type that is not served.
- `scopes_supported`: the scopes this service's own routes check (`require_scopes`), when they
  check any. Users and clients may hold others (for other services); RFC 8414 lets a server
  leave scopes out.

The bytes are made once, at startup, like the JWKS; there is nothing to rate-limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.routing import BaseRoute

from ..settings import Settings
from .published_keys import CACHE_CONTROL
from .security import REQUIRED_SCOPES

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"
GRANT_TYPES = ["password", "refresh_token", "client_credentials"]
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


class ServerMetadata(BaseModel):
    """RFC 8414 authorization server metadata, as this issuer fills it in."""

    issuer: str
    token_endpoint: str
    jwks_uri: str | None = None
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    response_types_supported: list[str]
    scopes_supported: list[str] | None = None


def metadata_document(settings: Settings, app: FastAPI, publishes_keys: bool) -> dict[str, Any]:
    """The metadata of this issuer (`settings.issuer_url` must be set)."""
    issuer = settings.issuer_url
    if issuer is None:
        raise ValueError("APP_JWT_ISSUER is not a URL: there is no metadata to serve")
    base = issuer.rstrip("/")
    document: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{base}/auth/token",
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "response_types_supported": [],
    }
    if publishes_keys:
        document["jwks_uri"] = f"{base}/.well-known/jwks.json"
    scopes = sorted(route_scopes(app))
    if scopes:
        document["scopes_supported"] = scopes
    return document


def route_scopes(app: FastAPI) -> Iterator[str]:
    """Every scope a `require_scopes` dependency of the app's routes checks."""
    for route in api_routes(app.router.routes):
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            yield from getattr(dependant.call, REQUIRED_SCOPES, ())
            pending.extend(dependant.dependencies)


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The app's API routes, also those of included routers: recent FastAPI versions keep an
    included router whole (with `original_router`) instead of copying its routes in."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from api_routes(nested.routes)


def metadata_paths(issuer: str) -> list[str]:
    """Where clients look for the metadata: the well-known path, and for an issuer with a path,
    the well-known path with the issuer's path after it (RFC 8414, section 3.1: a proxy that
    serves this service under that path forwards the host's well-known URL as it is)."""
    path = urlsplit(issuer).path.rstrip("/")
    return [WELL_KNOWN_PATH] + ([WELL_KNOWN_PATH + path] if path else [])


def install_metadata(app: FastAPI, settings: Settings, publishes_keys: bool) -> None:
    """Serialize the metadata once and add its route(s); nothing without an issuer URL. Call
    it once every router is in, so that `scopes_supported` sees every route."""
    issuer = settings.issuer_url
    if issuer is None:
        return
    body = json.dumps(metadata_document(settings, app, publishes_keys)).encode()

    async def oauth_server_metadata(request: Request) -> Response:
        """This issuer's OAuth 2.0 authorization server metadata (RFC 8414)."""
        return Response(
            body, media_type="application/json", headers={"Cache-Control": CACHE_CONTROL}
        )

    for number, path in enumerate(metadata_paths(issuer)):
        app.add_api_route(
            path,
            oauth_server_metadata,
            methods=["GET"],
            response_model=ServerMetadata,
            response_model_exclude_none=True,
            summary="Authorization server metadata (RFC 8414)",
            tags=["keys"],
            include_in_schema=number == 0,
            responses={200: {"headers": {"Cache-Control": {"schema": {"type": "string"}}}}},
        )
