"""FastAPI dependencies: who is calling, and may they do this.

Routes declare `principal: CurrentPrincipal` (any valid session) or
`principal: Annotated[Principal, Depends(require_scopes("write"))]`. They receive a `Principal`
only; the token and its decoded claims never leave `current_principal`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from .. import errors
from .tokens import MAX_TOKEN_BYTES, Principal

MAX_AUTHORIZATION_BYTES = len("Bearer ") + MAX_TOKEN_BYTES


class BearerToken(OAuth2PasswordBearer):
    """The bearer token of a request, or None; an oversized header is dropped unparsed.

    Being an `OAuth2PasswordBearer`, it also puts the password flow into the OpenAPI schema,
    so Swagger UI's Authorize button logs in through `POST /auth/token`.
    """

    async def __call__(self, connection: HTTPConnection) -> str | None:
        header = connection.headers.get("authorization")
        # Header values are Latin-1 text, one character per byte.
        if header is None or len(header) > MAX_AUTHORIZATION_BYTES:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        return token


bearer_token = BearerToken(tokenUrl="auth/token", auto_error=False)


async def current_principal(
    request: Request, token: Annotated[str | None, Depends(bearer_token)]
) -> Principal:
    """The caller, from a valid access token whose session is still alive; otherwise 401."""
    if token is None:
        raise errors.invalid_token()
    state = request.app.state
    principal: Principal | None = state.token_verifier.verify(token)
    if principal is None:
        raise errors.invalid_token()
    # One Redis call per request: logout, logout-all and refresh-token reuse end sessions here.
    if not await state.sessions.check(principal.sub, principal.sid):
        raise errors.invalid_token()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scopes(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals holding every one of `scopes` (else 403)."""
    needed = frozenset(scopes)

    async def principal_with_scopes(principal: CurrentPrincipal) -> Principal:
        if not needed <= principal.scopes:
            raise errors.insufficient_scope(needed)
        return principal

    return principal_with_scopes
