"""The FastAPI side of the limits: a dependency that limits a route per client address, and
`enforce`, which turns a limiter's `Decision` into RateLimit headers or a 429. The buckets
themselves are in `limiter.py` (login, per client, per remote subject) and, for signed-in
users, in the session check (`SessionStore.admit`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from . import errors, metrics
from .limiter import check_policy_name
from .network import client_address
from .rates import Decision, Rate
from .state import app_state


def enforce(decision: Decision, rate: Rate, policy: str, response: Response) -> None:
    """Refuse with 429 when `decision` says so; else put the RateLimit headers on `response`."""
    headers = decision.headers(rate, policy)
    if not decision.allowed:
        metrics.rate_limited(policy)
        raise errors.rate_limited(headers)
    response.headers.update(headers)


def client_of(request: Request) -> str:
    """The client's address, believing `X-Forwarded-For` only from `APP_TRUSTED_PROXIES`."""
    peer = request.client.host if request.client else None
    forwarded_for = ",".join(request.headers.getlist("x-forwarded-for"))
    return client_address(peer, forwarded_for, app_state(request).settings.trusted_proxies)


def limit_by_client(rate: Rate, policy: str) -> Callable[[Request, Response], Awaitable[None]]:
    """A dependency limiting a route per client address, for routes without a login. E.g.
    `@router.get("/prices", dependencies=[Depends(limit_by_client(Rate(30, 60), "public"))])`.
    """
    check_policy_name(policy)

    async def within_client_limit(request: Request, response: Response) -> None:
        decision = await app_state(request).stores.limiter.client_request(
            client_of(request), rate, policy
        )
        enforce(decision, rate, policy, response)

    return within_client_limit
