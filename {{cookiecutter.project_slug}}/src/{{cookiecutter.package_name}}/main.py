"""The application factory. Nothing is created at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api import health
from .errors import install_error_handlers
from .redis import create_redis
from .settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the Redis pool opens when it starts and closes when it stops.

    `uvicorn {{ cookiecutter.package_name }}.main:create_app --factory` works too (settings then
    come from the environment and `.env`).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(settings)
        app.state.redis = redis
        try:
            yield
        finally:
            await redis.aclose(close_connection_pool=True)

    app = FastAPI(title="{{ cookiecutter.project_name }}", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    return app
