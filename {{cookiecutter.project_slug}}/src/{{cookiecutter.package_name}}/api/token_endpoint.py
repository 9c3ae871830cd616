"""`POST /auth/token`: the token endpoint (RFC 6749, section 3.2) and its three grants.

- `grant_type=password` (or no `grant_type`, as before it was read): a user's name and password,
  for an access and a refresh token (`auth_routes.password_grant`). Its refusals keep their answers:
  401 `{"detail": "Incorrect username or password"}` with `WWW-Authenticate: Bearer`.
- `grant_type=refresh_token`: what `POST /auth/refresh` does, answered as RFC 6749 says
  (400 `invalid_grant` for a refresh token that is not good).
- `grant_type=client_credentials` (RFC 6749, section 4.4): a service account's own access
  token, no refresh token. The client authenticates with `client_secret_basic` or
  `client_secret_post` (never both); `scope` may ask for part of the client's scopes.

The password and refresh grants are the public client's (`APP_PUBLIC_CLIENT_ID`, which has no
secret), and their tokens carry its id. A `client_id` given with them must be that one, and a
secret must be empty: a registered client is confidential and may not act for users here, and
taking any other id would let a caller write any name into `client_id`, which resource servers
may trust. Refusals other than the password grant's are RFC 6749 section 5.2 bodies
(`errors.TokenError`); a parameter given twice is `invalid_request` (section 3.2).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote_plus

from fastapi import APIRouter, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from .. import audit, errors
from ..auth.clients import CLIENT_NAME_PATTERN, MAX_SECRET_INPUT, Client, ClientStore
from ..auth.passwords import MAX_PASSWORD_LENGTH
from ..auth.tokens import LEEWAY_SECONDS, MAX_TOKEN_BYTES
from ..auth.users import SCOPE_PATTERN
from ..limit_dependencies import client_of, enforce
from ..limiter import LOGIN_POLICY
from ..state import app_state
from .auth_routes import MAX_USERNAME_INPUT, TokenPair, continue_session, password_grant, token_pair
from .security import AUTHORIZATION

router = APIRouter(prefix="/auth", tags=["auth"])

logger = logging.getLogger(__name__)

GRANT_TYPES = ("password", "refresh_token", "client_credentials")
NOT_BASIC_ERRORS = (binascii.Error, UnicodeDecodeError)  # not base64, or not UTF-8 inside
MAX_GRANT_TYPE_INPUT = 64  # longer than any grant type: a too-long one is "unsupported", not 422
MAX_CLIENT_ID_INPUT = 256  # longer than any valid id: a too-long one is an unknown client
MAX_SCOPE_INPUT = 2048  # a few dozen scopes; a client's list is never longer than its file entry
# The token endpoint's parameters (RFC 6749, section 3.2: none may be sent twice).
PARAMETERS = (
    "grant_type",
    "username",
    "password",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
)


class ClientToken(BaseModel):
    """The answer of the client credentials grant: no refresh token (RFC 6749, section 4.4.3)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a token type, not a password)
    expires_in: int  # seconds until the access token expires
    scope: str  # what the token carries, space-separated


@dataclass(frozen=True, slots=True)
class Presented:
    """The client credentials of a token request: from the Basic header (`basic`) or the form."""

    client_id: str | None
    secret: str | None
    basic: bool


@router.post("/token", responses=errors.token_endpoint_responses())
async def token(
    request: Request,
    response: Response,
    # FastAPI reads an empty form field as a missing one: each grant says which it needs.
    grant_type: Annotated[str | None, Form(max_length=MAX_GRANT_TYPE_INPUT)] = None,
    username: Annotated[str | None, Form(max_length=MAX_USERNAME_INPUT)] = None,
    password: Annotated[str | None, Form(max_length=MAX_PASSWORD_LENGTH)] = None,
    refresh_token: Annotated[str | None, Form(max_length=MAX_TOKEN_BYTES)] = None,
    client_id: Annotated[str | None, Form(max_length=MAX_CLIENT_ID_INPUT)] = None,
    client_secret: Annotated[str | None, Form(max_length=MAX_PASSWORD_LENGTH)] = None,
    scope: Annotated[str | None, Form(max_length=MAX_SCOPE_INPUT)] = None,
) -> TokenPair | ClientToken:
    """The token endpoint: `grant_type` `password` (the default), `refresh_token` or
    `client_credentials`.

    Password: `username` and `password`, limited per client address and per account
    (`APP_LOGIN_RATE_LIMIT`); the answer holds an access and a refresh token. Refresh:
    `refresh_token`, spent by its use. Client credentials: a service account's id and secret,
    in a Basic header or as `client_id` and `client_secret`, limited like a login; an optional
    `scope`, at most the client's; the answer holds an access token only.
    """
    await refuse_repeated_parameters(request)
    presented = presented_credentials(request, client_id, client_secret)
    if grant_type == "client_credentials":
        return await client_credentials_grant(request, response, presented, scope)
    if grant_type not in (None, *GRANT_TYPES):
        raise errors.unsupported_grant_type()
    public_client_only(request, presented)
    if grant_type == "refresh_token":
        if refresh_token is None:
            raise errors.invalid_request("refresh_token is required")
        session = await continue_session(request, refresh_token)
        if session is None:
            raise errors.invalid_grant()
        return token_pair(request, session, response)
    if username is None or password is None:
        raise RequestValidationError(
            [
                {"type": "missing", "loc": ("body", name), "msg": "Field required", "input": None}
                for name, value in (("username", username), ("password", password))
                if value is None
            ]
        )
    return await password_grant(request, response, username, password)


async def refuse_repeated_parameters(request: Request) -> None:
    """`invalid_request` when a token parameter comes twice: which one counts is undefined, and
    a proxy or a log reading the other would disagree about what was asked. The form is parsed
    already (FastAPI keeps it), so this reads no more of the body."""
    form = await request.form()
    for name in PARAMETERS:
        if len(form.getlist(name)) > 1:
            raise errors.invalid_request("A parameter is given more than once")


def presented_credentials(
    request: Request, client_id: str | None, client_secret: str | None
) -> Presented:
    """The client id and secret of a request: from `Authorization: Basic` (RFC 6749, section
    2.3.1: each form-urlencoded, then joined by `:` and base64-encoded), else from the form.
    Both at once is `invalid_request` (section 2.3: one method per request), unless the form's
    `client_id` only repeats the header's; a header that is not Basic, or not decodable, is
    `invalid_client`."""
    headers = [value for name, value in request.scope["headers"] if name == AUTHORIZATION]
    if not headers:
        return Presented(client_id, client_secret, basic=False)
    if len(headers) > 1:
        raise errors.invalid_request("More than one Authorization header")
    decoded = basic_credentials(headers[0])
    if decoded is None:
        raise errors.invalid_client()
    if client_secret is not None or client_id not in (None, decoded[0]):
        raise errors.invalid_request("Use one client authentication method")
    return Presented(decoded[0], decoded[1], basic=True)


def basic_credentials(header: bytes) -> tuple[str, str] | None:
    """(id, secret) of an `Authorization: Basic` value, or None when it is not one."""
    scheme, _, encoded = header.decode("latin-1").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except NOT_BASIC_ERRORS:
        return None
    name, colon, secret = text.partition(":")
    if not colon:
        return None
    return unquote_plus(name), unquote_plus(secret)


def public_client_only(request: Request, presented: Presented) -> None:
    """The password and refresh grants are the public client's: any other id, or a secret, is
    `invalid_client` (see the module's docstring)."""
    public = app_state(request).settings.public_client_id
    # An empty id is no client at all, so the public one: Swagger UI's password flow sends
    # `Authorization: Basic` of an empty id and secret when its client fields are left blank.
    if presented.client_id not in (None, "", public) or presented.secret:
        raise errors.invalid_client()


async def client_credentials_grant(
    request: Request, response: Response, presented: Presented, scope: str | None
) -> ClientToken:
    """RFC 6749, section 4.4: an access token for the authenticated client itself.

    Each attempt is taken from the client address's and the client's login budgets before the
    secret is checked, and given back when it is right (as a login is: only failures use them
    up). An unknown client, a disabled one and a wrong secret take the same path, the same time
    (a dummy argon2 hash for an unknown one) and the same `invalid_client`. The token has a
    session as long as it lives, so the client commands end it at its next request.
    """
    state = app_state(request)
    if not presented.client_id or not presented.secret:
        raise errors.invalid_client()
    address, rate = client_of(request), state.settings.login_rate_limit
    decision = await state.stores.limiter.login_attempt(address, presented.client_id)
    if not decision.allowed:
        audit.event("client_auth_limited", client=address)  # the id tried is attacker's text
    enforce(decision, rate, LOGIN_POLICY, response)
    client = await look_up(state.clients, presented.client_id)
    matches = False
    if len(presented.secret) <= MAX_SECRET_INPUT:  # a longer one is wrong, and not hashed
        secret_hash = None if client is None else client.secret_hash
        matches = await state.issuer().password_checker.check(secret_hash, presented.secret)
    if not matches or client is None or client.disabled:
        audit.event("client_auth_failed", client=address, sub=client.name if client else None)
        raise errors.invalid_client()
    refunded = await state.stores.limiter.login_succeeded(address, presented.client_id)
    response.headers.update(refunded.headers(rate, LOGIN_POLICY))
    granted = granted_scopes(scope, client.scopes)
    if await state.users.get(client.name) is not None:
        logger.warning(
            "client %s has the name of a user, and they would share sessions: no token for it "
            "until one of them is renamed",
            client.name,
        )
        raise errors.invalid_client()
    issuer = state.issuer().token_issuer
    sid = await state.stores.sessions.open_for_token(
        client.name, granted, issuer.ttl_seconds + LEEWAY_SECONDS
    )
    # As for a login: a client disabled, deleted or given a new secret while its old secret was
    # being checked has had its sessions ended before this one opened; look again.
    if not await still_valid(state.clients, client):
        await state.stores.sessions.revoke(client.name, sid)
        audit.event("client_auth_failed", client=address, sub=client.name)
        raise errors.invalid_client()
    response.headers.update(errors.NO_STORE)
    access = issuer.issue(client.name, sid, granted, client_id=client.name)
    audit.event("client_token_issued", client=address, sub=client.name)
    return ClientToken(
        access_token=access.token, expires_in=access.expires_in, scope=" ".join(sorted(granted))
    )


async def look_up(clients: ClientStore, client_id: str) -> Client | None:
    """The client, or None for an unknown one or an id no client can have."""
    return await clients.get(client_id) if CLIENT_NAME_PATTERN.fullmatch(client_id) else None


def granted_scopes(requested: str | None, allowed: frozenset[str]) -> frozenset[str]:
    """The scopes of the token: all the client's when none are asked for (RFC 6749, section
    3.3, lets the server choose a default), else exactly those asked, which must be scope
    tokens the client holds; `invalid_scope` otherwise."""
    if requested is None or not requested.strip():
        return allowed
    asked = frozenset(requested.split(" ")) - {""}
    if not all(SCOPE_PATTERN.fullmatch(scope) for scope in asked) or not asked <= allowed:
        raise errors.invalid_scope()
    return asked


async def still_valid(clients: ClientStore, client: Client) -> bool:
    """`client` still exists, enabled, with the secret hash the grant checked."""
    current = await clients.get(client.name)
    if current is None or current.disabled:
        return False
    return current.secret_hash == client.secret_hash
