"""Rate-limit policies and decisions.

The algorithm is GCRA (the generic cell rate algorithm), run inside Redis by the scripts in
`scripts/`: one key per limited identity holds a "theoretical arrival time"; each request moves
it forward by the emission interval (period / limit), and a request is refused while that time
lies more than a whole period ahead. The burst is the limit, and the key expires as soon as it
no longer limits anything. Time comes from Redis `TIME`, so every app process agrees.

To limit a route differently, give it its own `Rate` (e.g. `Rate.from_string("10/second")`) and
policy name; the request script takes the numbers as arguments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 60 * 60}
# The template's pre-gen hook checks the `rate_limit` answer with a copy of this pattern (RATE in
# hooks/pre_gen_project.py; the template's tests/test_answers.py keeps the two equal).
RATE_PATTERN = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")
MICROSECONDS = 1_000_000
DEFAULT_POLICY = "user"  # the name in the RateLimit headers of the per-user limit


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` requests per `period_seconds`; the limit is also the largest burst."""

    limit: int
    period_seconds: int

    def __post_init__(self) -> None:
        # Checked here, not only in from_string: a route's own Rate(...) is built in code, and
        # a zero would otherwise fail as a division on every request to that route.
        if self.limit < 1 or self.period_seconds < 1:
            raise ValueError(f"a rate needs a limit and a period of at least 1, not {self!r}")

    @classmethod
    def from_string(cls, text: str) -> Rate:
        """Parse `N/second`, `N/minute` or `N/hour`; raise ValueError naming what is accepted."""
        match = RATE_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a rate; use N/second, N/minute or N/hour (e.g. 100/minute)"
            )
        return cls(limit=int(match[1]), period_seconds=PERIOD_SECONDS[match[2]])

    @property
    def emission_interval_us(self) -> int:
        """Microseconds one request moves the theoretical arrival time (at least 1)."""
        return max(1, self.period_seconds * MICROSECONDS // self.limit)

    def script_args(self) -> tuple[int, int]:
        """What the Redis scripts take: (emission interval in microseconds, burst)."""
        return self.emission_interval_us, self.limit

    def policy_header(self, name: str) -> str:
        """`RateLimit-Policy` value (IETF httpapi-ratelimit-headers draft)."""
        return f'"{name}";q={self.limit};w={self.period_seconds}'

    def __str__(self) -> str:
        names = {seconds: name for name, seconds in PERIOD_SECONDS.items()}
        return f"{self.limit}/{names.get(self.period_seconds, f'{self.period_seconds}s')}"


@dataclass(frozen=True, slots=True)
class Decision:
    """One rate-limit check: allowed or not, and the numbers the headers need."""

    allowed: bool
    remaining: int
    retry_after_us: int  # 0 when allowed
    reset_us: int  # until the quota is whole again

    @classmethod
    def from_script(
        cls, allowed: int, remaining: int, retry_after_us: int, reset_us: int
    ) -> Decision:
        return cls(bool(allowed), max(0, remaining), max(0, retry_after_us), max(0, reset_us))

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds, rounded up, so a client that waits this long is let in."""
        return max(1, math.ceil(self.retry_after_us / MICROSECONDS))

    def headers(self, rate: Rate, name: str) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` (plus `Retry-After` when refused)."""
        if self.allowed:
            reset_seconds = math.ceil(self.reset_us / MICROSECONDS)
        else:
            reset_seconds = self.retry_after_seconds
        headers = {
            "RateLimit-Policy": rate.policy_header(name),
            "RateLimit": f'"{name}";r={self.remaining};t={reset_seconds}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers
