"""What the routes need, in one typed object per app: `AppState`, reached through `app_state`.

`create_app` builds it with what needs no Redis (settings, the user and client stores, the
token verifier and, issuing tokens of our own, the key set, the issuer and the password
checker); the lifespan adds what does (the Redis clients and the stores on them) when the app
starts, and takes nothing away until it stops. Nothing else is kept per app, and nothing per
request: a handler gets this object, never a copy, and holds no part of it past its request.

Every read goes through `app_state`, so mypy checks each use (Starlette's `app.state` is
untyped), and a route that runs before the app has started fails with a `LookupError` that
says so, not with an `AttributeError` on some field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from .auth.clients import ClientStore
from .auth.keys import KeySet
from .auth.passwords import PasswordChecker
from .auth.remote_keys import RemoteKeys
from .auth.sessions import SessionStore
from .auth.tokens import TokenIssuer, TokenVerifier
from .auth.users import UserStore
from .item_store import ItemStore
from .limiter import Limiter
from .outage import RedisOutage
from .redis_clients import RedisClient
from .settings import Settings
from .shutdown import Drain
from .tracing import Tracing

# The one name under Starlette's `app.state`; nothing else is put there.
STATE_ATTRIBUTE = "typed"


@dataclass(frozen=True, slots=True)
class Issuing:
    """What issuing our own tokens needs: absent when another issuer's tokens are verified."""

    keys: KeySet
    token_issuer: TokenIssuer
    password_checker: PasswordChecker


@dataclass(frozen=True, slots=True)
class Stores:
    """The Redis clients and the stores on them: made when the app starts, closed when it stops."""

    redis: RedisClient
    outage: RedisOutage
    sessions: SessionStore
    limiter: Limiter
    items: ItemStore  # the example router's data: put your own routes' stores beside it


@dataclass(slots=True)
class AppState:
    """One app's parts. Set once: `stores` when the app starts, the rest in `create_app`."""

    settings: Settings
    drain: Drain
    users: UserStore
    clients: ClientStore
    token_verifier: TokenVerifier
    issuing: Issuing | None  # None: tokens come from a remote issuer
    remote_keys: RemoteKeys | None  # that issuer's published keys
    tracing: Tracing | None  # None: APP_TRACING=off
    running: Stores | None = field(default=None)
    # What a 422 may name: made from the OpenAPI document at the first 422 (`error_handlers.py`).
    declared_names: frozenset[str] | None = field(default=None)

    @property
    def stores(self) -> Stores:
        if self.running is None:
            raise LookupError("the app has not started: its Redis stores open in its lifespan")
        return self.running

    def issuer(self) -> Issuing:
        """The key set, token issuer and password checker; only an app that issues tokens
        has them (its token routes are mounted only then)."""
        if self.issuing is None:
            raise LookupError("this app verifies another issuer's tokens and issues none")
        return self.issuing


def attach(app: Starlette, state: AppState) -> None:
    """Make `state` the app's; `create_app` calls this once."""
    setattr(app.state, STATE_ATTRIBUTE, state)


def app_state(where: HTTPConnection | Starlette) -> AppState:
    """The `AppState` of a request's (or websocket's) app, or of an app itself."""
    app = where.app if isinstance(where, HTTPConnection) else where
    state = getattr(app.state, STATE_ATTRIBUTE, None)
    if not isinstance(state, AppState):
        raise LookupError("not an app made by create_app")
    return state
