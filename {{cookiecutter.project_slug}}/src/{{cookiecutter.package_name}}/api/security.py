"""FastAPI dependencies: who is calling, and may they do this.

Routes declare `principal: CurrentPrincipal` (any valid session) or
`principal: Annotated[Principal, Depends(require_scopes("write"))]`. They receive a `Principal`
only; the token and its decoded claims never leave `Authenticated.__call__`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from .. import errors, metrics
from ..auth.remote import verify_with_fresh_keys
from ..auth.tokens import MAX_TOKEN_BYTES, Principal, Refused, UnknownKey
from ..limit_dependencies import enforce
from ..limiter import check_policy_name
from ..rates import DEFAULT_POLICY, Rate
from ..state import app_state

MAX_AUTHORIZATION_BYTES = len("Bearer ") + MAX_TOKEN_BYTES
AUTHORIZATION = b"authorization"  # ASGI header names are lower-case bytes
# The attribute on a `require_scopes` dependency that names its scopes, so the issuer's metadata
# can list the scopes its routes check (`api/metadata.py`).
REQUIRED_SCOPES = "required_scopes"

UNUSABLE = ""  # an Authorization header that holds no bearer token: no verifier accepts it


def bearer_token(connection: HTTPConnection) -> str | None:
    """The bearer token of a request; None when there is no Authorization header at all, and
    an empty token when the header is not a usable bearer token (an oversized one is dropped
    unparsed).

    A request with more than one Authorization header is refused (400, counted as "duplicate"):
    which one counts is not defined (RFC 9110 section 5.3 allows repeating only list-valued
    fields), and a proxy that reads the last one would disagree with us, reading the first,
    about who is calling. The raw ASGI headers are scanned once, to the end, with nothing built.
    """
    header: bytes | None = None
    for name, value in connection.scope["headers"]:
        if name == AUTHORIZATION:
            if header is not None:
                metrics.auth_rejected("duplicate")
                raise errors.several_authorizations()
            header = value
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION_BYTES:
        return UNUSABLE
    # Header values are Latin-1 text, one character per byte.
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return UNUSABLE
    return token


class Authenticated(OAuth2PasswordBearer):
    """The dependency behind `CurrentPrincipal`: the caller, from a valid access token whose
    session is alive and within its rate limit; otherwise 401 (or 429 over the limit, 400 for
    more than one Authorization header).

    It is one dependency, not a chain of small ones: FastAPI resolves every dependency on every
    request, and this one runs on every protected request. Being an `OAuth2PasswordBearer`, it
    also puts the password flow into the OpenAPI schema, so Swagger UI's Authorize button logs
    in through `POST /auth/token`.
    """

    def __init__(self, rate: Rate | None = None, policy: str = DEFAULT_POLICY) -> None:
        super().__init__(tokenUrl="auth/token", scheme_name="BearerToken", auto_error=False)
        self._rate = rate  # None: APP_RATE_LIMIT
        self._policy = check_policy_name(policy)

    # FastAPI calls a dependency with what its signature asks for, so this may differ from
    # the parent's `__call__(request) -> str | None`.
    async def __call__(self, request: Request, response: Response) -> Principal:  # type: ignore[override]
        token = bearer_token(request)
        if token is None:
            metrics.auth_rejected("missing")
            raise errors.not_authenticated()
        state = app_state(request)
        # None and `UnknownKey` (a `kid` this service does not hold) are both simply invalid,
        # unless a remote issuer has published that key since we last fetched its keys.
        principal = state.token_verifier.verify(token) if token else None
        if isinstance(principal, UnknownKey):
            principal = await verify_with_fresh_keys(state.token_verifier, token)
        if not isinstance(principal, Principal):
            metrics.auth_rejected(principal.reason if isinstance(principal, Refused) else "invalid")
            raise errors.invalid_token()
        rate = self._rate or state.settings.rate_limit
        if state.settings.checks_sessions:
            # One Redis call: the session is alive (logout, logout-all and refresh-token reuse
            # end it) and the user may make one more request under `rate`.
            decision = await state.stores.sessions.admit(
                principal.sub, principal.sid, rate, self._policy
            )
        else:  # a remote issuer's token without a session here: the rate limit is the call
            decision = await state.stores.limiter.subject_request(principal.sub, rate, self._policy)
        if decision is None:  # the session has ended
            metrics.auth_rejected("session")
            raise errors.invalid_token()
        enforce(decision, rate, self._policy, response)
        if state.tracing is not None:
            state.tracing.identify(principal.sub)  # only with APP_TRACING_INCLUDE_SUBJECT
        return principal


current_principal = Authenticated()


def limited_principal(rate: Rate, policy: str) -> Authenticated:
    """Like `current_principal`, with its own limit, e.g. for an expensive route:

        Expensive = Annotated[Principal, Depends(limited_principal(Rate(5, 60), "export"))]

    Each policy has its own bucket per user and its own name in the RateLimit headers.
    """
    return Authenticated(rate, policy)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
# The errors a route with `CurrentPrincipal` can answer, for its `responses=` (OpenAPI); a route
# with `require_scopes` adds 403: `responses=errors.responses(400, 401, 403, 429, 503)`.
AUTHENTICATED = errors.responses(400, 401, 429, 503)


def require_scopes(
    *scopes: str, authenticated: Authenticated = current_principal
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals holding every one of `scopes` (else 403).

    `authenticated` finds the principal: by default under the user's limit (`APP_RATE_LIMIT`);
    pass `limited_principal(...)` for a route with a limit of its own, which the scope check
    then shares (still one Redis call, from one bucket):

        Writer = Annotated[
            Principal, Depends(require_scopes("write", authenticated=limited_principal(...)))
        ]
    """
    needed = frozenset(scopes)
    caller = Depends(authenticated)  # not a default's call: FastAPI reads the object

    async def principal_with_scopes(principal: Principal = caller) -> Principal:
        if not needed <= principal.scopes:
            metrics.auth_rejected("scope")
            raise errors.insufficient_scope(needed)
        return principal

    setattr(principal_with_scopes, REQUIRED_SCOPES, needed)
    return principal_with_scopes
