"""`serve`: the HTTP service under uvicorn, with the edge limits of server.py.

It refuses to start, with one line and status 2, when the settings are bad, the token keys cannot
be loaded or the process may not open the descriptors its connections need: checked here, once,
rather than by each worker with a traceback. SIGTERM stops it with status 0, after the drain
(shutdown.py) and the graceful shutdown below.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import tempfile
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from ..logs import log_config
from ..settings import Settings
from .command import CommandError, load_settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..edge_limits import EdgeLimits

# After the drain (APP_SHUTDOWN_DRAIN_SECONDS, shutdown.py): how long requests in flight may take
# to finish once the process stops accepting. compose.scale.yaml's `stop_grace_period` covers
# both, so Docker never kills a replica that is still answering.
GRACEFUL_SHUTDOWN_SECONDS = 10
# With --workers, uvicorn's parent pings each worker and replaces one that has not answered in
# this long. Its own 5 s also counts a worker's start: a CPU-starved container whose workers
# take longer than that to start replaces them for ever and never serves.
WORKER_HEALTHCHECK_SECONDS = 30
# How long an idle connection is kept open. It also bounds what a client that vanished without
# a FIN costs (a reset after its request leaves the connection here until then): 5 s is short
# enough that such connections do not pile up, and longer than the 4 s after which nginx
# (deploy/nginx.conf, `keepalive_timeout`) stops reusing a connection, so nginx never sends a
# request on one uvicorn is closing.
KEEP_ALIVE_SECONDS = 5
# prometheus-client's multiprocess mode: each worker writes its counts to files there.
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; the work is done by then."""
    raise SystemExit(0)


def served_app() -> FastAPI:
    """The app as `serve` runs it, in each worker process.

    What is built by now (modules, routes, schemas, keys) lives as long as the process, so it is
    moved out of the garbage collector's sight (`gc.freeze`). A full collection then scans only
    what requests made, instead of pausing a request for tens of milliseconds.
    """
    from ..main import create_app  # here, so that `create-user` does not load the web stack
    from ..shutdown import drain_on_sigterm
    from ..state import app_state

    app = create_app()
    # Now, not in `serve`: uvicorn has just installed its signal handlers, in this process.
    state = app_state(app)
    drain_on_sigterm(state.drain, state.settings.shutdown_drain_seconds)
    gc.collect()  # today's garbage is freed, not frozen
    gc.freeze()
    return app


def key_problem(settings: Settings) -> str | None:
    """Why the token keys cannot be loaded, in one line; checked before the workers start, which
    would otherwise each print a traceback. The message names files, never key material."""
    from jose.exceptions import JOSEError

    from ..auth.keys import load_key_set

    if settings.remote_issuer:  # no keys of its own: it fetches the issuer's once running
        return None
    try:
        load_key_set(settings)
    except (JOSEError, ValueError, OSError) as error:
        return f"JWT keys: {error}"
    return None


def serve(args: argparse.Namespace) -> None:
    """Serve until stopped. A `--workers` run counts its metrics in a folder of its own, removed
    when `serve` returns."""
    from ..edge_limits import descriptor_problem  # here, so that user commands stay light

    settings = load_settings()
    problem = key_problem(settings) or descriptor_problem(
        edge_limits(settings), settings.redis_max_connections
    )
    if problem is not None:
        raise CommandError(problem)
    # Process managers (Docker, systemd, Kubernetes) read status 0 as a clean stop.
    signal.signal(signal.SIGTERM, exit_cleanly)
    # One process counts in memory. Several workers each write their counts to files in a
    # directory of this run only (a reused one would add an earlier run's counts), which
    # `/metrics` adds up; it is removed when `serve` exits.
    os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
    metrics_dir = tempfile.mkdtemp(prefix="prometheus-") if args.workers > 1 else None
    if metrics_dir is not None:
        os.environ[MULTIPROC_DIR_VARIABLE] = metrics_dir  # the workers inherit it
    try:
        run_uvicorn(args, settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def edge_limits(settings: Settings) -> EdgeLimits:
    from ..edge_limits import EdgeLimits

    return EdgeLimits(settings.header_timeout_seconds, settings.max_connections)


def run_uvicorn(args: argparse.Namespace, settings: Settings) -> None:
    from ..server import bounded_protocol

    uvicorn.run(
        "{{ cookiecutter.package_name }}.cli.serve:served_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        # Bounded header blocks, trailers, bodies, waits and connections (see server.py).
        # uvicorn calls it as it calls a protocol class.
        http=bounded_protocol(edge_limits(settings)),  # type: ignore[arg-type]
        proxy_headers=False,  # the app decides whom to believe (APP_TRUSTED_PROXIES)
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_config=log_config(settings.logs_as),  # one format for every line
        access_log=False,  # the app writes request lines itself, with their request ids
    )


def add_commands(commands: Any) -> None:
    """Add `serve` to `commands` (argparse's subparsers of the main parser)."""
    parser = commands.add_parser("serve", help="run the HTTP service (uvicorn)")
    parser.add_argument("--host", help="bind address (default: APP_HOST)")
    parser.add_argument("--port", type=int, help="bind port (default: APP_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.set_defaults(handler=serve)
