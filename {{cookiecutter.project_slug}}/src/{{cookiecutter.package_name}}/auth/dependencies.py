"""FastAPI dependencies: who is calling, and may they do this.

Routes declare `principal: CurrentPrincipal` (any valid session) or
`principal: Annotated[Principal, Depends(require_scopes("write"))]`. They receive a `Principal`
only; the token and its decoded claims never leave `current_principal`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from .. import errors
from ..limits import check_policy_name, enforce
from ..ratelimit import DEFAULT_POLICY, Rate
from .tokens import MAX_TOKEN_BYTES, Principal

MAX_AUTHORIZATION_BYTES = len("Bearer ") + MAX_TOKEN_BYTES


UNUSABLE = ""  # an Authorization header that holds no bearer token: no verifier accepts it


class BearerToken(OAuth2PasswordBearer):
    """The bearer token of a request; None when there is no Authorization header at all, and
    an empty token when the header is not a usable bearer token (an oversized one is dropped
    unparsed).

    Being an `OAuth2PasswordBearer`, it also puts the password flow into the OpenAPI schema,
    so Swagger UI's Authorize button logs in through `POST /auth/token`.
    """

    async def __call__(self, connection: HTTPConnection) -> str | None:
        header = connection.headers.get("authorization")
        if header is None:
            return None
        # Header values are Latin-1 text, one character per byte.
        if len(header) > MAX_AUTHORIZATION_BYTES:
            return UNUSABLE
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return UNUSABLE
        return token


bearer_token = BearerToken(tokenUrl="auth/token", auto_error=False)


async def authenticate(
    request: Request, response: Response, token: str | None, rate: Rate, policy: str
) -> Principal:
    """The caller, from a valid access token whose session is alive and within its limit."""
    if token is None:
        raise errors.not_authenticated()
    state = request.app.state
    principal: Principal | None = state.token_verifier.verify(token) if token else None
    if principal is None:
        raise errors.invalid_token()
    # One Redis call: the session is alive (logout, logout-all and refresh-token reuse end it)
    # and the user may make one more request under `rate`.
    decision = await state.sessions.admit(principal.sub, principal.sid, rate, policy)
    if decision is None:
        raise errors.invalid_token()
    enforce(decision, rate, policy, response)
    return principal


async def current_principal(
    request: Request, response: Response, token: Annotated[str | None, Depends(bearer_token)]
) -> Principal:
    """The caller, limited by `APP_RATE_LIMIT`; otherwise 401 (or 429 over the limit)."""
    return await authenticate(
        request, response, token, request.app.state.settings.rate_limit, DEFAULT_POLICY
    )


def limited_principal(rate: Rate, policy: str) -> Callable[..., Awaitable[Principal]]:
    """Like `current_principal`, with its own limit, e.g. for an expensive route:

        Expensive = Annotated[Principal, Depends(limited_principal(Rate(5, 60), "export"))]

    Each policy has its own bucket per user and its own name in the RateLimit headers.
    """
    check_policy_name(policy)

    async def principal_within(
        request: Request, response: Response, token: Annotated[str | None, Depends(bearer_token)]
    ) -> Principal:
        return await authenticate(request, response, token, rate, policy)

    return principal_within


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scopes(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals holding every one of `scopes` (else 403)."""
    needed = frozenset(scopes)

    async def principal_with_scopes(principal: CurrentPrincipal) -> Principal:
        if not needed <= principal.scopes:
            raise errors.insufficient_scope(needed)
        return principal

    return principal_with_scopes
