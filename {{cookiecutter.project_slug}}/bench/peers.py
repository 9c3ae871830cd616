"""The peers of `python -m bench --peers`: what a team would otherwise write, served the way
its documentation serves it, beside `serve` in the same rounds, on the same Redis, with the
same tokens.

    python bench/peers.py tutorial PORT   # FastAPI's tutorial: python-jose decode, no Redis
    python bench/peers.py limiter PORT    # the same, plus fastapi-limiter on Redis

`tutorial` is the OAuth2 + JWT chapter of FastAPI's documentation, in its shape: an async
dependency decodes the bearer token with python-jose (`jwt.decode`, which checks the signature,
`exp` and, told our audience, `aud`) and looks the subject up in a dict, a second one checks the
user is active, and the route returns the user through its response model. Nothing is checked in
Redis: a token stays good after a logout until it expires. `limiter` adds fastapi-limiter's
`RateLimiter` (pyrate-limiter's Redis bucket, keyed by client address and path, its default) to
the same route. Both have a bare `/health/live`, so the benchmark starts and warms them up as it
does `serve`, and both run under uvicorn's defaults (its access log on, written to the
benchmark's /dev/null).

Plumbing only, not part of what is compared: the key, audience and Redis come from the
service's own settings (the environment the benchmark gives every server).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import OAuth2PasswordBearer
from fastapi_limiter.depends import RateLimiter
from jose import JWTError, jwt
from pydantic import BaseModel
from pyrate_limiter import Duration, Limiter, Rate, RedisBucket
from redis.asyncio import Redis

from {{ cookiecutter.package_name }}.settings import Settings

# The benchmark's own limit (bench/__main__.py, UNLIMITED): every request is counted, none
# refused.
UNLIMITED = Rate(999_999_999, Duration.SECOND)


def verification_key(settings: Settings) -> str:
    """The tutorial's `SECRET_KEY`; for RS256 and ES256, the public key's PEM."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if settings.jwt_public_key_file is not None:
        return settings.jwt_public_key_file.read_text(encoding="utf-8")
    raise SystemExit("error: the peers need APP_JWT_SECRET or APP_JWT_PUBLIC_KEY_FILE")


settings = Settings()
KEY, ALGORITHM, AUDIENCE = verification_key(settings), settings.jwt_algorithm, settings.jwt_audience
# The tutorial's `fake_users_db`, with the benchmark's user (its hash is never checked here).
USERS = {"bench": {"username": "bench", "disabled": False, "hashed_password": "unused"}}

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token")


class TokenData(BaseModel):
    username: str | None = None


class User(BaseModel):
    username: str
    email: str | None = None
    full_name: str | None = None
    disabled: bool | None = None


class UserInDB(User):
    hashed_password: str


def get_user(db: dict[str, dict[str, Any]], username: str | None) -> UserInDB | None:
    record = db.get(username) if username is not None else None
    return UserInDB(**record) if record is not None else None


async def get_current_user(token: Annotated[str, Depends(oauth2_scheme)]) -> UserInDB:
    unauthorized = HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="Could not validate credentials",
        headers={"WWW-Authenticate": "Bearer"},
    )
    try:
        payload: dict[str, Any] = jwt.decode(token, KEY, algorithms=[ALGORITHM], audience=AUDIENCE)
        username = payload.get("sub")
        if not isinstance(username, str):
            raise unauthorized
        token_data = TokenData(username=username)
    except JWTError:
        raise unauthorized from None
    user = get_user(USERS, token_data.username)
    if user is None:
        raise unauthorized
    return user


async def get_current_active_user(
    current_user: Annotated[User, Depends(get_current_user)],
) -> User:
    if current_user.disabled:
        raise HTTPException(status_code=400, detail="Inactive user")
    return current_user


def peer(
    dependencies: Sequence[Any] = (), lifespan: Callable[[FastAPI], Any] | None = None
) -> FastAPI:
    """The tutorial's app: a bare route and a protected one, with `dependencies` on the latter."""
    app = FastAPI(lifespan=lifespan)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me", response_model=User, dependencies=list(dependencies))
    async def me(current_user: Annotated[User, Depends(get_current_active_user)]) -> User:
        return current_user

    return app


def tutorial() -> FastAPI:
    return peer()


def limited() -> FastAPI:
    # pyrate-limiter makes a Redis bucket's limiter only inside the running event loop (its
    # background leak is a task there): so in the lifespan, before the first request.
    rate_limiter = RateLimiter(limiter=cast(Limiter, None))

    # Under the run's own prefix, and deleted at the end: the bucket is a sorted set without a TTL.
    bucket_key = f"{settings.redis_key_prefix}:peer-limiter"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url)
        bucket = await RedisBucket.init([UNLIMITED], redis, bucket_key)
        rate_limiter.limiter = Limiter(bucket)
        yield
        await redis.delete(bucket_key)
        await redis.aclose()

    return peer([Depends(rate_limiter)], lifespan)


PEERS = {"tutorial": tutorial, "limiter": limited}


def main(arguments: list[str]) -> int:
    name, port = arguments
    uvicorn.run(PEERS[name](), port=int(port))  # one worker, uvicorn's defaults
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
