"""Rate limits that do not need a session: login attempts, and per-client limits on public routes.

Authenticated routes are limited per user inside the session check (`SessionStore.admit`), in
the same Redis call. The limits here run before anyone is known, so they key on the client's
address (see `network.client_address`) and, for login, also on the attempted account.

The two login buckets (the client address's and the account's) share one hash tag
(`keyspace.py` names every key), so one script takes from both atomically; on Redis Cluster
they live on one node, and login traffic is small next to authenticated traffic. Every key
expires as soon as it no longer limits. The route dependencies that apply these limits and
answer 429 are in `limit_dependencies.py`.

A login attempt is taken from both buckets before the password is checked, so a refused attempt
costs no hashing and attempts running at the same time can never exceed the limit. A successful
login then gives its attempt back (`login_succeeded`): only failed attempts use up the budget,
so many users behind one address (an office's NAT) can all log in.

With `APP_RATE_LIMIT_FAIL_OPEN=true` these limiters let requests through when Redis does not
answer, instead of failing them with 503. That keeps public routes up during a Redis outage, at
the price of no limit while it lasts; logins still fail then, because sessions need Redis.
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError

from . import scripts
from .keyspace import Keyspace
from .multiplex import MultiplexedRedis
from .outage import RedisOutage
from .rates import Decision, Rate
from .redis_clients import RedisClient
from .settings import Settings
from .tracing import Tracing

LOGIN_POLICY = "login"
POLICY_PATTERN = re.compile(r"[a-z0-9_-]{1,32}")  # a policy name is part of keys and headers


def check_policy_name(policy: str) -> str:
    if not POLICY_PATTERN.fullmatch(policy):
        raise ValueError(f"{policy!r} is not a policy name; use 1 to 32 of a-z 0-9 _ -")
    return policy


class Limiter:
    """Per-client and per-account buckets in Redis, one script call per check."""

    def __init__(
        self,
        redis: RedisClient | MultiplexedRedis,
        settings: Settings,
        outage: RedisOutage,
        tracing: Tracing | None = None,
    ) -> None:
        self._keys = Keyspace(settings.redis_key_prefix)
        self._login_rate = settings.login_rate_limit
        self._fail_open = settings.rate_limit_fail_open
        self._take = scripts.register(redis, "limit.lua", with_gcra=True, tracing=tracing)
        self._give_back = scripts.register(redis, "refund.lua", with_gcra=True, tracing=tracing)
        self._outage = outage

    async def login_attempt(self, client: str, username: str) -> Decision:
        """Take one attempt from the client's and the account's buckets (both, or neither)."""
        keys = self._keys.login_buckets(client, username)
        return await self._run_or_fail_open(self._take, keys, self._login_rate)

    async def login_succeeded(self, client: str, username: str) -> Decision:
        """Give the attempt taken by `login_attempt` back to both buckets, in one call."""
        keys = self._keys.login_buckets(client, username)
        return await self._run_or_fail_open(self._give_back, keys, self._login_rate)

    async def client_request(self, client: str, rate: Rate, policy: str) -> Decision:
        """Take one request from the client's bucket for `policy`."""
        key = self._keys.client_bucket(client, policy)
        return await self._run_or_fail_open(self._take, [key], rate)

    async def subject_request(self, sub: str, rate: Rate, policy: str) -> Decision:
        """Take one request from the bucket of a remote issuer's subject, for `policy`."""
        key = self._keys.subject_bucket(sub, policy)
        return await self._run_or_fail_open(self._take, [key], rate)

    async def _run_or_fail_open(
        self, script: scripts.RunScript, keys: list[str], rate: Rate
    ) -> Decision:
        try:
            reply = await script(keys=keys, args=list(rate.script_args()))
        except (RedisError, OSError, TimeoutError) as error:
            if not self._fail_open:
                raise
            self._outage.skipped(error)  # logged once per outage, not once per check
            return Decision(allowed=True, remaining=rate.limit, retry_after_us=0, reset_us=0)
        return Decision.from_script(*reply)
