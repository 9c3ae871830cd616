"""The application factory. Nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import docs, metrics
from .api import auth_routes, health, items, me, published_keys, token_endpoint
from .api.metadata import install_metadata
from .auth.clients import ClientStore, FileClientStore
from .auth.keys import load_key_set
from .auth.passwords import PasswordChecker, password_hasher
from .auth.remote import RemoteTokenVerifier
from .auth.remote_keys import RemoteKeys
from .auth.sessions import SessionStore
from .auth.tokens import TokenVerifier, create_token_pair
from .auth.users import FileUserStore, UserStore
from .error_handlers import install_error_handlers
from .item_store import ItemStore
from .limiter import Limiter
from .middleware import RequestLog
from .outage import RedisOutage
from .redis_clients import close_redis, create_per_request_client, create_redis
from .settings import Settings, get_settings
from .shutdown import Drain
from .state import AppState, Issuing, Stores, attach
from .tracing import FASTAPI_TELEMETRY, tracing_for

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    users: UserStore | None = None,
    clients: ClientStore | None = None,
) -> FastAPI:
    """Build the app; its Redis clients open when it starts and close when it stops.

    Keys are read, the dummy password hash is made and the issuer's metadata is serialized here,
    once. `users` and `clients` replace the file-backed user and service-account stores (see
    `UserStore`, `ClientStore`). With APP_JWT_JWKS_URL or APP_OIDC_ISSUER set,
    the app verifies another issuer's tokens instead (see `auth/remote_keys.py`). What the routes
    use is one `AppState` (`state.py`), its Redis stores added when the app starts.

    `uvicorn {{ cookiecutter.package_name }}.main:create_app --factory` works too (settings then
    come from the environment and `.env`).
    """
    settings = settings or get_settings()
    tracing = tracing_for(settings)  # None unless APP_TRACING=otlp (see tracing.py)
    remote_keys: RemoteKeys | None = None
    issuing: Issuing | None = None
    verifier: TokenVerifier
    if settings.remote_issuer:
        # Another service or an identity provider issues the tokens: we only verify them, with
        # the keys it publishes. No keys of our own, so no login, no refresh, no JWKS here.
        remote_keys = RemoteKeys(settings, tracing)
        verifier = RemoteTokenVerifier(settings, remote_keys)
    else:
        keys = load_key_set(settings)
        token_issuer, verifier = create_token_pair(settings, keys)
        issuing = Issuing(keys, token_issuer, PasswordChecker(password_hasher(settings)))
    drain = Drain()  # started by SIGTERM under `serve` (see shutdown.py)
    state = AppState(
        settings=settings,
        drain=drain,
        users=users if users is not None else FileUserStore(settings.users_file),
        clients=clients if clients is not None else FileClientStore(settings.clients_file),
        token_verifier=verifier,
        issuing=issuing,
        remote_keys=remote_keys,
        tracing=tracing,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tracing is not None:
            tracing.start()  # before anything that makes spans: the first key fetch, requests
        redis = create_redis(settings)
        per_request = create_per_request_client(settings)  # None on Redis Cluster
        outage = RedisOutage(redis, settings.redis_timeout_seconds)
        state.running = Stores(
            redis=redis,
            outage=outage,
            sessions=SessionStore(redis, settings, per_request, tracing),
            limiter=Limiter(per_request or redis, settings, outage, tracing),
            items=ItemStore(redis, settings, tracing),  # the example router's data
        )
        if remote_keys is not None:
            if isinstance(state.token_verifier, RemoteTokenVerifier):
                logger.info(state.token_verifier.describe())  # which tokens it takes, once
            await remote_keys.start()  # not ready until the issuer's keys are here
        try:
            yield
        finally:
            state.running = None
            if remote_keys is not None:
                await remote_keys.close()
            await outage.close()
            if per_request is not None:
                await per_request.aclose()
            await close_redis(redis)
            if tracing is not None:
                await tracing.close()  # the last spans, Redis' included

    app = FastAPI(
        title="{{ cookiecutter.project_name }}",
        lifespan=lifespan,
        # FastAPI's own docs load their assets from a CDN; docs.py serves them from here.
        docs_url=None,
        redoc_url=None,
        openapi_url=docs.OPENAPI_URL if settings.serves_docs else None,
        telemetry=FASTAPI_TELEMETRY,  # FastAPI's own spans off: ours are tracing.py's
    )
    attach(app, state)
    install_error_handlers(app)
    # The only middleware: request ids, request lines and request metrics (see middleware.py).
    app.add_middleware(
        RequestLog, trusted_proxies=settings.trusted_proxies, drain=drain, tracing=tracing
    )
    if settings.serves_docs:
        docs.install_docs(app)
    app.include_router(health.router)
    if settings.metrics:
        app.include_router(metrics.router)
    if issuing is not None:
        if issuing.keys.jwks_json is not None:  # RS256/ES256: public keys to publish
            app.include_router(published_keys.router)
        app.include_router(token_endpoint.router)  # POST /auth/token
        app.include_router(auth_routes.router)
    app.include_router(me.router)
    app.include_router(items.router)  # the example router: replace it with your own
    if issuing is not None:  # with every route in, for the scopes they check
        install_metadata(app, settings, publishes_keys=issuing.keys.jwks_json is not None)
    return app
