"""Sessions in Redis: what makes a stateless access token revocable.

A login opens a session; every access token names it (`sid`), and every request checks that it
is still alive, so logging out takes effect at once in every process. Keys (prefix `p`,
`{sub}` being the Redis Cluster hash tag, so one script may touch all of a user's keys):

    p:{sub}:sess:<sid>   hash: scopes, created_ms, abs_exp_ms, refresh (SHA-256), spent
                         (SHA-256 of the token spent at the last rotation), rotations
                         TTL: min(idle TTL, absolute expiry - now), slid on use
    p:{sub}:sessions     sorted set: sid -> absolute expiry (ms); pruned and capped at login,
                         TTL: its latest member's expiry
    p:{sub}:rl           the user's rate-limit bucket (GCRA; `:rl:<policy>` for other policies),
                         TTL: as long as it still limits

Time is Redis's own (`TIME` inside the scripts), so app servers with skewed clocks agree.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from .. import scripts
from ..keyspace import Keyspace
from ..multiplex import MultiplexedRedis
from ..rates import DEFAULT_POLICY, Decision, Rate
from ..redis_clients import RedisClient
from ..settings import Settings
from ..tracing import Tracing
from .users import USERNAME_PATTERN

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 128 bits
REFRESH_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 256 bits
BASE64URL_PATTERN = re.compile(r"[A-Za-z0-9_-]{2,88}")  # a user name (<= 64 bytes), encoded
MAX_REFRESH_TOKEN_LENGTH = 160  # the longest well-formed token, with room to spare
# The `refresh` field of a session that has no refresh token (a service account's): never a
# SHA-256 digest, so no token presented to `rotate_refresh` can match it or its `spent`.
NO_REFRESH = "-"


@dataclass(frozen=True, slots=True)
class Session:
    """A live session and the refresh token that continues it (shown to the client once)."""

    sub: str
    sid: str
    scopes: frozenset[str]
    refresh_token: str


class ReuseDetected:
    """`rotate_refresh`'s answer when the token spent at the last rotation came back: the
    session is ended (worth an audit line: someone holds a stolen or replayed token)."""


REUSE_DETECTED = ReuseDetected()


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


def new_refresh_token(sub: str, sid: str) -> str:
    """`<base64url(sub)>.<sid>.<secret>`: the token itself says which session it continues."""
    encoded_sub = base64.urlsafe_b64encode(sub.encode()).decode().rstrip("=")
    return f"{encoded_sub}.{sid}.{secrets.token_urlsafe(32)}"


def parse_refresh_token(token: str) -> tuple[str, str] | None:
    """(sub, sid) of a well-formed refresh token, or None; never raises, never asks Redis."""
    if len(token) > MAX_REFRESH_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    encoded_sub, sid, secret = parts
    if not (
        BASE64URL_PATTERN.fullmatch(encoded_sub)
        and SESSION_ID_PATTERN.fullmatch(sid)
        and REFRESH_SECRET_PATTERN.fullmatch(secret)
    ):
        return None
    try:
        sub = base64.urlsafe_b64decode(encoded_sub + "=" * (-len(encoded_sub) % 4)).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are both ValueErrors
        return None
    if not USERNAME_PATTERN.fullmatch(sub):
        return None
    return sub, sid


def refresh_token_hash(token: str) -> str:
    """What Redis keeps instead of the token. The token has 256 random bits, so no salt or KDF."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Create, check, continue (rotate the refresh token) and end sessions; one script call each."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        per_request: MultiplexedRedis | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`per_request` runs the script of every request (`admit`); without it, `redis` does."""
        self._keys = Keyspace(settings.redis_key_prefix)
        self._idle_ms = settings.session_idle_ttl_seconds * 1000
        self._absolute_ms = settings.session_absolute_ttl_seconds * 1000
        self._max_sessions = settings.max_sessions_per_user
        self._max_client_tokens = settings.max_tokens_per_client
        self._create = scripts.register(redis, "session_create.lua", tracing=tracing)
        self._request = scripts.register(
            per_request or redis, "request.lua", with_gcra=True, tracing=tracing
        )
        self._refresh = scripts.register(redis, "session_refresh.lua", tracing=tracing)
        self._revoke = scripts.register(redis, "session_revoke.lua", tracing=tracing)
        self._revoke_all = scripts.register(redis, "session_revoke_all.lua", tracing=tracing)

    async def create(self, sub: str, scopes: frozenset[str]) -> Session:
        """Open a session; beyond the per-user cap, the user's oldest sessions end."""
        sid = new_session_id()
        refresh_token = new_refresh_token(sub, sid)
        await self._create(
            keys=[self._keys.session(sub, sid), self._keys.session_index(sub)],
            args=[
                sid,
                " ".join(sorted(scopes)),
                refresh_token_hash(refresh_token),
                self._idle_ms,
                self._absolute_ms,
                self._max_sessions,
                self._keys.session_prefix(sub),
            ],
        )
        return Session(sub=sub, sid=sid, scopes=scopes, refresh_token=refresh_token)

    async def open_for_token(self, sub: str, scopes: frozenset[str], seconds: int) -> str:
        """Open a session for one access token of a service account and return its `sid`.

        It lives `seconds` at most (the token's lifetime and the verifier's leeway), never slides
        past that (`admit` keeps the absolute expiry), and has no refresh token (`NO_REFRESH`):
        so it costs Redis no longer than the token lives, and ending it (`revoke_all`, as the
        client commands do) ends the token at its next request. Beyond
        `APP_MAX_TOKENS_PER_CLIENT` live ones, the client's oldest end.
        """
        sid = new_session_id()
        lifetime_ms = seconds * 1000
        await self._create(
            keys=[self._keys.session(sub, sid), self._keys.session_index(sub)],
            args=[
                sid,
                " ".join(sorted(scopes)),
                NO_REFRESH,
                lifetime_ms,
                lifetime_ms,
                self._max_client_tokens,
                self._keys.session_prefix(sub),
            ],
        )
        return sid

    async def admit(
        self, sub: str, sid: str, rate: Rate, policy: str = DEFAULT_POLICY
    ) -> Decision | None:
        """One Redis call per request: None when the session is gone (nothing is written then);
        otherwise the session's idle TTL slides and a token is taken from the user's bucket."""
        interval_us, burst = rate.script_args()
        reply = await self._request(
            keys=[self._keys.session(sub, sid), self._keys.user_bucket(sub, policy)],
            args=[self._idle_ms, interval_us, burst],
        )
        if reply[0] != 1:
            return None
        return Decision.from_script(*reply[1:5])

    async def rotate_refresh(self, refresh_token: str) -> Session | ReuseDetected | None:
        """Spend `refresh_token` and return the session with its next one, or None.

        None for a malformed token (Redis is not asked), an ended session, or a token that is
        not the session's current one. If it is the one spent at the last rotation, the session
        is ended too, and the answer is `REUSE_DETECTED`: a spent token coming back means it was
        stolen or replayed (RFC 9700, section 4.14). Any other token changes nothing, so a
        made-up token for a known `sub` and `sid` (both readable in an access token) cannot end
        the session.
        """
        parsed = parse_refresh_token(refresh_token)
        if parsed is None:
            return None
        sub, sid = parsed
        next_token = new_refresh_token(sub, sid)
        reply = await self._refresh(
            keys=[self._keys.session(sub, sid), self._keys.session_index(sub)],
            args=[
                refresh_token_hash(refresh_token),
                refresh_token_hash(next_token),
                self._idle_ms,
                sid,
            ],
        )
        if reply[0] == -1:
            return REUSE_DETECTED
        if reply[0] != 1:
            return None
        scopes = frozenset(reply[1].decode().split())
        return Session(sub=sub, sid=sid, scopes=scopes, refresh_token=next_token)

    async def revoke(self, sub: str, sid: str) -> None:
        """End one session (a script, so it is one atomic call on Redis and on Redis Cluster)."""
        keys = [self._keys.session(sub, sid), self._keys.session_index(sub)]
        await self._revoke(keys=keys, args=[sid])

    async def revoke_all(self, sub: str) -> int:
        """End every session of `sub`; returns how many were alive."""
        ended = await self._revoke_all(
            keys=[self._keys.session_index(sub)], args=[self._keys.session_prefix(sub)]
        )
        return int(ended)
