"""`python -m bench --profile`: where a request's CPU goes, stage by stage, for each route.

py-spy samples the running `serve` process (`py-spy record --format raw`, 100 samples a second)
while wrk loads one route. Each sample stops the server for a moment to read a whole stack
(with `--nonblocking` the stacks come out torn, their outer frames missing); at this rate that
adds a few percent to the CPU time measured, alike on both routes. Each sample of the
event-loop thread is given to the innermost stage whose function is on its stack (`STAGES`); a
stage's share of the samples times the CPU time per request measured over the same load is its
cost in microseconds per request. The markers name functions of the stack this project locks
(uvicorn's httptools protocol, Starlette, FastAPI, python-jose, this package); after an upgrade
that renames one, its time shows up in the stage around it, so check the "rest" row.

py-spy is not a dependency: install it (`pip install py-spy`) where the benchmark runs. It
attaches to another process, which needs root or `kernel.yama.ptrace_scope = 0` on Linux.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

SAMPLES_PER_SECOND = 100  # 2,000 samples in a 20 s run, while each pause costs little
OTHER = "event loop and the rest (selector, callbacks, timers)"
# (stage, a marker in a frame): the innermost frame with a marker decides, so nested stages
# (the verify inside the dependency inside the route) each keep their own time.
STAGES = (
    ("protocol: parse, edge limits, transport", "BoundedHttpToolsProtocol"),
    ("Starlette and FastAPI around the middleware", "FastAPI.__call__ ("),
    ("middleware: request id, metrics", "RequestLog.__call__ ("),
    ("request line (a JSON log record, written)", "RequestLog.log ("),
    ("routing: matching the path", "Router.__call__ ("),
    ("response: headers and body through the middleware to the socket", "Response.__call__ ("),
    ("route: endpoint and response model", "get_request_handler.<locals>.app ("),
    ("FastAPI dependency resolution", "solve_dependencies ("),
    ("auth dependency: Authorization header, principal", "Authenticated.__call__ ("),
    ("token verify (python-jose)", "TokenVerifier.verify ("),
    ("session check + rate limit: the script call", "SessionStore.admit ("),
    ("Redis: the multiplexed connection (send, replies)", "multiplex.py"),
    ("RateLimit headers", "enforce ("),
)
FRAME_FILE = re.compile(r"\((?P<file>[^():]+)(?::\d+)?\)$")
IDLE_THREADS = ("WorkerThread.run (",)  # anyio's worker threads waiting for work


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise SystemExit("error: --profile needs py-spy on PATH (pip install py-spy)")
    return found


def start_sampling(pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` for `seconds` into `output` (collapsed stacks)."""
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--rate", str(SAMPLES_PER_SECOND), "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_sampling(sampler: subprocess.Popen[bytes]) -> None:
    _, errors = sampler.communicate(timeout=120)
    if sampler.returncode != 0:
        last = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: py-spy failed ({last[0]}); it may need root to attach")


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for stage, marker in STAGES:
            if marker in frame:
                return stage
    return OTHER


def shares(stacks: Path) -> Counter[str]:
    """Samples per stage, from py-spy's collapsed stacks (`frame;frame;... count` per line)."""
    counts: Counter[str] = Counter()
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frame for frame in frames for idle in IDLE_THREADS):
            continue
        counts[stage_of(frames)] += int(count)
    return counts


def print_profile(by_route: dict[str, tuple[Counter[str], float]]) -> None:
    """One row per stage: CPU microseconds per request on each route."""
    routes = list(by_route)
    row = "  {:<66}" + " {:>12}" * len(routes)
    print("\nwhere the CPU of a request goes (py-spy samples x CPU per request), us:")
    print(row.format("stage", *routes))
    names = [stage for stage, _ in STAGES] + [OTHER]
    for name in names:
        cells = []
        for route in routes:
            counts, cpu_us = by_route[route]
            total = sum(counts.values())
            cells.append(f"{cpu_us * counts[name] / total:.1f}" if total else "-")
        if any(cell not in ("0.0", "-") for cell in cells):
            print(row.format(name, *cells))
    print(row.format("all (CPU per request)", *(f"{by_route[r][1]:.1f}" for r in routes)))
