"""Rate-limit policies, parsed once from strings such as `100/minute`."""

from __future__ import annotations

import re
from dataclasses import dataclass

PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 60 * 60}
RATE_PATTERN = re.compile(r"([1-9][0-9]{0,8})/(second|minute|hour)")


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` requests per `period_seconds`; the limit is also the largest burst."""

    limit: int
    period_seconds: int

    @classmethod
    def from_string(cls, text: str) -> Rate:
        """Parse `N/second`, `N/minute` or `N/hour`; raise ValueError naming what is accepted."""
        match = RATE_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"{text!r} is not a rate; use N/second, N/minute or N/hour (e.g. 100/minute)"
            )
        return cls(limit=int(match[1]), period_seconds=PERIOD_SECONDS[match[2]])

    def __str__(self) -> str:
        names = {seconds: name for name, seconds in PERIOD_SECONDS.items()}
        return f"{self.limit}/{names[self.period_seconds]}"
