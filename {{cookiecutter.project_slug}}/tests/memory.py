"""A leak detector for tests: does traced memory grow with the amount of work done?

`measure` runs a workload in rounds. The first rounds are warm-up and are not traced: the
interpreter and the libraries fill caches there (compiled regexes, typing and pydantic
internals, the Redis connection, script hashes) that look like leaks but are paid once. Then
tracing starts; a first traced round sets the baseline and every further round is followed by
a full garbage collection and a snapshot. The result is the traced size after each round.

`assert_bounded` is the one decision rule: the growth from the baseline to the last round,
leaving out the single largest one-round step, must stay within a fixed number of bytes,
whatever the number of requests. A leak keeps something every round, so it grows in every
step and fails; the canary in test_memory.py proves that on a deliberately leaky app. The
largest step is left out because a one-time reallocation is not a leak but can be large. Seen
here: without sniffio installed, every request through httpx's ASGI transport tries
`import sniffio`; pytest's import hook then makes a path and `sys.intern`s its parts, and now
and then that rebuilds CPython's table of interned strings. The new table is one block of about
1.9 MiB (attributed to pathlib); the old one, allocated before tracing started, was never seen.

What counts: every allocation still alive at the snapshot, attributed (as tracemalloc does)
to the line that made it, except lines of tracemalloc itself, pytest and pluggy, this module,
and the files passed as `not_counted` (the workload's own bookkeeping). Leaving the standard
library in is deliberate: the claims of a decoded token are built by `json`, so a leak of
claims shows up under the standard library's lines, not the service's. A workload must keep
nothing between rounds: no lists of tokens, no response objects, no counters of its own.

Before each snapshot, asyncio's cancelled timers are dropped from its heap, and two caches are
cleared. asyncio keeps a cancelled timer in its heap until the timer comes due or more than half
of the heap is cancelled; each keeps the context it copied, and with it the request id of the
request that armed it (every Redis call arms and cancels a timeout). How many such timers are
alive at a snapshot swings by tens of KiB from round to round: bounded, but seen as growth in
one run in twenty on a loaded machine. Of the caches, the first is
CPython's type attribute cache: 4096 slots, each keeping the attribute name last looked up
there alive. Names built at run time (e.g. `getattr(finder, "spec_for_" + name)` in setuptools'
import hook, reached by the same `import sniffio`) make it fill up slowly, a few KiB a round
for many rounds: bounded, but it looks like a leak. The other is `urlsplit`'s cache of recent
URLs: the test client parses every request's URL there (for its cookie jar), so a workload that
asks for fresh paths fills it a few KiB a round until it holds 128 of them.

One import is done before the rounds, as it happens at most once: the codecs `json` picks for
bytes that start with a NUL byte or a BOM (`json.detect_encoding`). A malformed token's header
is random bytes, and now and then such bytes; the first time, `encodings.utf_16_be` (or another)
is imported, some 14 KiB seen as growth in whichever round that happens. Two such imports in one
measurement, in different rounds, were enough to pass the bound.
"""

from __future__ import annotations

import asyncio
import codecs
import gc
import heapq
import itertools
import sys
import tracemalloc
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

# A round: gets its number (0, 1, ..., unique across warm-up and measured rounds, so each can
# use fresh users) and returns how many requests it made. It must retain nothing.
Workload = Callable[[int], Awaitable[int]]

ALWAYS_IGNORED = (tracemalloc.__file__, __file__, "*/_pytest/*", "*/pluggy/*")

# Python 3.13 clears the type cache (and more) here; 3.11 and 3.12 have only the older name.
clear_interpreter_caches: Callable[[], None] = (
    getattr(sys, "_clear_internal_caches", None) or sys._clear_type_cache
)
# `urllib.parse.urlsplit` keeps its last 128 distinct URLs (a functools.lru_cache).
clear_url_cache: Callable[[], None] = urllib.parse.clear_cache  # type: ignore[attr-defined]
# What `json.detect_encoding` may answer for bytes, besides UTF-8 (imported before any round).
JSON_CODECS = ("utf-8-sig", "utf-16", "utf-16-be", "utf-16-le", "utf-32", "utf-32-be", "utf-32-le")


@dataclass(frozen=True, slots=True)
class Rounds:
    """Traced bytes after each measured round; the first is the baseline."""

    sizes: tuple[int, ...]
    requests_per_round: int

    @property
    def steps(self) -> list[int]:
        """How much each round after the baseline added (negative when it freed)."""
        return [after - before for before, after in zip(self.sizes, self.sizes[1:], strict=False)]

    @property
    def growth(self) -> int:
        """Growth from the baseline to the last round, leaving out the largest one-round step."""
        return self.sizes[-1] - self.sizes[0] - max(0, *self.steps)

    @property
    def requests(self) -> int:
        """Requests made in the rounds that `growth` counts."""
        return self.requests_per_round * (len(self.steps) - 1)

    def describe(self) -> str:
        kib = ", ".join(f"{size / 1024:.1f}" for size in self.sizes)
        return (
            f"traced KiB after the baseline and each of {len(self.steps)} rounds of "
            f"{self.requests_per_round} requests: [{kib}]; steps {self.steps} B; "
            f"growth without the largest step {self.growth} B"
        )


async def measure(
    workload: Workload,
    *,
    warmup_rounds: int = 2,
    measured_rounds: int = 3,
    not_counted: Iterable[str] = (),
) -> Rounds:
    """Run `workload` for `warmup_rounds`, one baseline round, then `measured_rounds` more."""
    if warmup_rounds < 1 or measured_rounds < 2:
        raise ValueError("use at least one warm-up round and two measured rounds")
    ignored = [*ALWAYS_IGNORED, *not_counted]
    for name in JSON_CODECS:
        codecs.lookup(name)  # imports the codec's module once; the registry keeps it
    numbers = iter(range(warmup_rounds + 1 + measured_rounds))
    for number in itertools.islice(numbers, warmup_rounds):
        await workload(number)
    started_here = not tracemalloc.is_tracing()  # PYTHONTRACEMALLOC may have started it
    if started_here:
        tracemalloc.start()
    try:
        requests = await workload(next(numbers))
        # The first filtering compiles the filters' patterns (fnmatch and re cache them):
        # let that happen before the baseline is taken.
        traced_size(ignored)
        sizes = [traced_size(ignored)]
        for number in numbers:
            requests = await workload(number)
            sizes.append(traced_size(ignored))
    finally:
        if started_here:
            tracemalloc.stop()
    return Rounds(sizes=tuple(sizes), requests_per_round=requests)


def drop_cancelled_timers() -> None:
    """Do now what asyncio does from time to time: drop cancelled timers from the running loop's
    heap. (A loop without that heap, such as uvloop's, keeps none: nothing to do.)"""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    scheduled: list[asyncio.TimerHandle] | None = getattr(loop, "_scheduled", None)
    if scheduled is None:
        return
    live = [timer for timer in scheduled if not timer.cancelled()]
    for timer in scheduled:
        if timer.cancelled():
            timer._scheduled = False  # type: ignore[attr-defined]  # as asyncio itself does
    heapq.heapify(live)
    scheduled[:] = live
    loop._timer_cancelled_count = 0  # type: ignore[attr-defined]


def traced_size(ignored: Iterable[str]) -> int:
    """Bytes traced now, after a full collection, leaving out allocations made by `ignored`."""
    drop_cancelled_timers()
    gc.collect()
    clear_interpreter_caches()
    clear_url_cache()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, pattern) for pattern in ignored]
    )
    return sum(trace.size for trace in snapshot.traces)


def assert_bounded(rounds: Rounds, bound_bytes: int) -> None:
    """Fail unless the growth (without its largest one-round step) is at most `bound_bytes`.

    The bound is a constant: it does not scale with the number of requests or rounds, so any
    per-request or per-user retention exceeds it once enough requests have run.
    """
    if rounds.growth > bound_bytes:
        raise AssertionError(
            f"memory grows with the workload: {rounds.describe()}; the bound is {bound_bytes} B "
            f"({rounds.growth / max(1, rounds.requests):.1f} B kept per request)"
        )
