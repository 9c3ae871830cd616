"""`/auth/refresh`, `/auth/logout`, `/auth/logout-all`, and the password and refresh grants
that `POST /auth/token` (token_endpoint.py) runs."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from .. import audit, errors
from ..auth.sessions import ReuseDetected, Session, parse_refresh_token
from ..auth.tokens import MAX_TOKEN_BYTES
from ..auth.users import USERNAME_PATTERN, User, UserStore
from ..limit_dependencies import client_of, enforce
from ..limiter import LOGIN_POLICY
from ..state import app_state
from .security import AUTHENTICATED, CurrentPrincipal

router = APIRouter(prefix="/auth", tags=["auth"])

MAX_USERNAME_INPUT = 256  # longer than any valid name, so a too-long one is "unknown", not 422


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a password)
    expires_in: int  # seconds until the access token expires


class RefreshRequest(BaseModel):
    refresh_token: str = Field(max_length=MAX_TOKEN_BYTES)


def token_pair(request: Request, session: Session, response: Response) -> TokenPair:
    """The answer of a successful login or refresh; no cache may keep it (RFC 6749, 5.1)."""
    response.headers.update(errors.NO_STORE)
    access = (
        app_state(request).issuer().token_issuer.issue(session.sub, session.sid, session.scopes)
    )
    return TokenPair(
        access_token=access.token,
        refresh_token=session.refresh_token,
        expires_in=access.expires_in,
    )


async def password_grant(
    request: Request, response: Response, username: str, password: str
) -> TokenPair:
    """OAuth2 password grant: a user name and password for an access and a refresh token.

    Each attempt is taken from the client address's and the account's budgets
    (`APP_LOGIN_RATE_LIMIT`) before any password is checked, and given back when the password is
    right: only failed attempts use the budgets up. An unknown user, a disabled one and a wrong
    password take the same path, the same time and the same 401 (the attempt is not given back
    for a disabled user either, so not even the RateLimit header tells them apart).
    """
    state = app_state(request)
    client, rate = client_of(request), state.settings.login_rate_limit
    decision = await state.stores.limiter.login_attempt(client, username)
    if not decision.allowed:
        audit.event("login_limited", client=client)  # the name tried is attacker's text
    enforce(decision, rate, LOGIN_POLICY, response)
    user = await state.users.get(username) if USERNAME_PATTERN.fullmatch(username) else None
    password_hash = None if user is None else user.password_hash
    matches = await state.issuer().password_checker.check(password_hash, password)
    if not matches or user is None or user.disabled:
        # The account only when it exists: an unknown name may be a mistyped password.
        audit.event("login_failed", client=client, sub=None if user is None else user.name)
        raise errors.login_failed()
    refunded = await state.stores.limiter.login_succeeded(client, username)
    response.headers.update(refunded.headers(rate, LOGIN_POLICY))
    session = await state.stores.sessions.create(user.name, user.scopes)
    # The user commands change the user first and end the sessions after. A user disabled,
    # deleted or given a new password while this login checked the old one would otherwise keep
    # a session opened after those sessions were ended: so look again, now that it exists.
    if not await still_valid(state.users, user):
        await state.stores.sessions.revoke(session.sub, session.sid)
        audit.event("login_failed", client=client, sub=user.name)
        raise errors.login_failed()
    audit.event("login_succeeded", client=client, sub=user.name)
    return token_pair(request, session, response)


async def still_valid(users: UserStore, user: User) -> bool:
    """`user` still exists, enabled, with the password hash the login checked."""
    current = await users.get(user.name)
    if current is None or current.disabled:
        return False
    return current.password_hash == user.password_hash


@router.post("/refresh", responses=errors.responses(400, 401, 413, 422, 503))
async def refresh(request: Request, response: Response, body: RefreshRequest) -> TokenPair:
    """A new token pair for a refresh token, which is now spent: using it again ends the session.

    The user is looked up again: a user removed or disabled since login loses the session here,
    and the new access token carries only scopes the user still has (never more than at login).
    `POST /auth/token` with `grant_type=refresh_token` does the same, answering as RFC 6749 says.
    """
    session = await continue_session(request, body.refresh_token)
    if session is None:
        raise errors.invalid_token()
    return token_pair(request, session, response)


async def continue_session(request: Request, refresh_token: str) -> Session | None:
    """The session `refresh_token` continues, with its next refresh token and the scopes its
    user still has; None when the token is refused (the caller says how)."""
    state = app_state(request)
    parsed = parse_refresh_token(refresh_token)
    if parsed is None:
        return None
    # The user first: if the store fails, the refresh token is not spent yet and still works.
    user = await state.users.get(parsed[0])
    if user is None or user.disabled:
        # A user removed or disabled by hand loses the session. Not a service account's: its
        # `sub` and `sid` are readable in its access token, and a refresh token made up from them
        # must not end it (the client commands end client sessions).
        if user is not None or await state.clients.get(parsed[0]) is None:
            await state.stores.sessions.revoke(*parsed)
        return None
    session: Session | ReuseDetected | None = await state.stores.sessions.rotate_refresh(
        refresh_token
    )
    if isinstance(session, ReuseDetected):
        audit.event(
            "refresh_reuse_detected",
            client=client_of(request),
            sub=user.name,
            level=logging.WARNING,
        )
        return None
    if session is None:
        return None
    audit.event("refresh_rotated", client=client_of(request), sub=user.name)
    return replace(session, scopes=session.scopes & user.scopes)


# These return None, not a Response, so the RateLimit headers set by the dependency are kept.
@router.post("/logout", status_code=204, response_class=Response, responses=AUTHENTICATED)
async def logout(request: Request, principal: CurrentPrincipal) -> None:
    """End this session: its access and refresh tokens stop working on the next request."""
    await app_state(request).stores.sessions.revoke(principal.sub, principal.sid)
    audit.event("logout", client=client_of(request), sub=principal.sub)


@router.post("/logout-all", status_code=204, response_class=Response, responses=AUTHENTICATED)
async def logout_all(request: Request, principal: CurrentPrincipal) -> None:
    """End every session of this user, in every process, on the next request."""
    await app_state(request).stores.sessions.revoke_all(principal.sub)
    audit.event("logout_all", client=client_of(request), sub=principal.sub)
