"""`python -m bench --instructions`: each server's instructions per request, counted by callgrind.

The rounds measure the CPU time a server spends per request, which is what a request costs. On a
small shared machine that figure also moves with things no order of rounds cancels: two copies
of the same server, started one after the other, have come out tens of microseconds per request
apart, either way round. A difference smaller than that cannot be shown with it.

Instructions executed do not move so. valgrind's callgrind runs the server on a simulated CPU
and counts every instruction it executes, in every thread: the same code answering the same
requests gives the same count, whatever else the machine is doing (two copies of the same server
came out within 1 %). An instruction is not a unit of time (a cache miss costs more than an
addition), but what one build adds to another of the same code is mostly more of the same kind
of work, Python bytecode, so its share converts to time at the base's own rate:

    added CPU per request = added instructions / the base's instructions * the base's user time

with the base's CPU time per request in user mode from the rounds of the same run. User mode
only: callgrind counts the instructions of the process, not those the kernel runs for it (its
system time: reading and writing sockets, waking threads). What a build adds in the kernel is
therefore not in the figure; tracing at a low sample ratio adds little there (its one socket is
the exporter's, which sends at most one request every five seconds).

How a server is counted: it starts again, alone, under `valgrind --tool=callgrind
--instr-atstart=no` (its start-up is not counted), and each route gets `WARMUP` requests
uncounted. Then `callgrind_control` switches counting on and zeroes the counters, exactly
`REQUESTS` requests go to the route over as many connections as the rounds use (so the event
loop batches its work as it did there), and the counters are dumped: the dump's total divided by
`REQUESTS` is the figure. Everything the process does in that window is in it: the event loop,
the garbage collector, and the threads (the span exporter's among them).

Under valgrind a request takes about fifty times as long, so whatever runs by the clock (the
span exporter sends what is queued every five seconds) runs about fifty times as often per
request as at full speed: its fixed cost is counted too often, never too rarely, and the figure
errs on the high side.

valgrind is not a dependency: install it (`apt-get install valgrind`) where the benchmark runs.
`callgrind_control` reaches the server through valgrind's gdbserver (vgdb), which, while the
server waits for input, attaches with ptrace: root, or `kernel.yama.ptrace_scope = 0` on Linux.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
from tests.traffic import CLIENT_KEEP_ALIVE_SECONDS

WARMUP = 200  # requests per route before counting: caches, pooled connections, scripts
REQUESTS = 2000  # counted per route: at a 1 % sample ratio, 20 traced ones (± 4.5)
START_SECONDS = 180  # importing the app under valgrind takes ten times as long as without
REQUEST_SECONDS = 120  # one request, queued behind the others on the simulated CPU
# A request's Redis call may wait behind the others' work for longer than the default 0.5 s
# allows (and fail with 503); how long it may wait changes no instruction.
SETTINGS = {"APP_REDIS_TIMEOUT_SECONDS": "30"}


def tools() -> tuple[str, str]:
    """valgrind and callgrind_control, or an error saying how to get them."""
    valgrind, control = shutil.which("valgrind"), shutil.which("callgrind_control")
    if valgrind is None or control is None:
        raise SystemExit("error: --instructions needs valgrind on PATH (apt-get install valgrind)")
    return valgrind, control


def under_callgrind(output: Path) -> list[str]:
    """The command line prefix that runs a server under callgrind, counting nothing yet; its
    dumps go to `output`.1, `output`.2, ..."""
    valgrind, _ = tools()
    return [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}"]


def per_request(
    pid: int, url: str, tokens: list[str], connections: int, output: Path, dumps: int
) -> float:
    """Instructions the server `pid` executes per request to `url`: `REQUESTS` requests counted
    after `WARMUP` uncounted ones. `dumps` is how many dumps the server has written before."""
    asyncio.run(send(url, tokens, WARMUP, connections))
    control("--instr=on", pid)
    control("--zero", pid)
    asyncio.run(send(url, tokens, REQUESTS, connections))
    control("--dump", pid)
    control("--instr=off", pid)
    return total(Path(f"{output}.{dumps + 1}")) / REQUESTS


def control(option: str, pid: int) -> None:
    _, callgrind_control = tools()
    result = subprocess.run(
        [callgrind_control, option, str(pid)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        last = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(
            f"error: callgrind_control {option} failed ({last[0]}); it may need root to attach"
        )


async def send(url: str, tokens: list[str], count: int, connections: int) -> None:
    """Exactly `count` requests, each with the next token, over `connections` connections that
    each send their share one after another."""
    limits = httpx.Limits(max_connections=connections, keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_SECONDS) as client:

        async def one_connection(offset: int) -> None:
            for index in range(offset, count, connections):
                headers = {"Authorization": f"Bearer {tokens[index % len(tokens)]}"}
                response = await client.get(url, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"error: {url} answered {response.status_code}")

        await asyncio.gather(*(one_connection(offset) for offset in range(connections)))


def total(dump: Path) -> int:
    """The instructions a callgrind dump counts (its `totals:` line, the `Ir` event)."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"error: {dump} has no totals line")
