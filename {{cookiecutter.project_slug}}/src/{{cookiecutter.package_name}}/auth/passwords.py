"""Password hashing with argon2id (argon2-cffi), and a login check that does not leak who exists."""

from __future__ import annotations

import secrets

import anyio
import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from ..settings import Settings

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # characters; the login form refuses longer input before hashing
# Each hash takes the configured memory (64 MiB by default): bound how many run at once, so a
# burst of logins queues instead of exhausting memory and the thread pool.
MAX_CONCURRENT_HASHES = 4
# A wrong password, or a stored hash argon2 cannot read: either way, no login.
MISMATCH_ERRORS = (VerificationError, InvalidHashError)


def password_hasher(settings: Settings) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )


class PasswordChecker:
    """Checks a login's password off the event loop, in the same time whether the user exists.

    For an unknown user it verifies against a dummy hash made once, at startup, with the same
    parameters, so an unknown name and a wrong password cost the same and look the same.
    """

    def __init__(self, hasher: argon2.PasswordHasher) -> None:
        self._hasher = hasher
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(32))
        self._limiter = anyio.CapacityLimiter(MAX_CONCURRENT_HASHES)

    async def check(self, stored_hash: str | None, password: str) -> bool:
        """True only when `stored_hash` exists and matches; None means "no such user"."""
        target = self._dummy_hash if stored_hash is None else stored_hash
        matches = await anyio.to_thread.run_sync(
            self._matches, target, password, limiter=self._limiter
        )
        return matches and stored_hash is not None

    def _matches(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except MISMATCH_ERRORS:
            return False
