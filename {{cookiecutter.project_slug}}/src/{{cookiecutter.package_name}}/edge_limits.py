"""The edge's limits: what a client may make the server hold before the app sees a request,
bounded in size, in time, and in number. The protocol in `server.py`, which `serve` hands to
uvicorn, refuses:

- a header block (request line and headers) longer than `MAX_HEADER_BYTES`: 431, before more of
  it is read;
- a chunked body's trailer section that does not fit in what its header block left of
  `MAX_HEADER_BYTES`: 431 (trailer fields are read and dropped: the app never sees them);
- a body declared longer than `MAX_BODY_BYTES`: 413, before any of it is read and before the app
  is called; a chunked body that grows past it: 413 (or, once the app has begun its answer, the
  connection is simply closed);
- a request head that takes longer than `APP_HEADER_TIMEOUT_SECONDS` from its first byte (for a
  new connection: from the connection) to its end, or a body that stops arriving for that long:
  408 (a connection on which nothing at all was sent is closed without an answer);
- a connection beyond `APP_MAX_CONNECTIONS` open ones in this process: 503, then closed.

Each limit is a constant here, or a setting (the reasons for those are in `settings.py`).
Raise `MAX_BODY_BYTES` if you add routes that take uploads (and `client_max_body_size` in
`deploy/nginx.conf` with it). `uvicorn --factory ...main:create_app` serves without these limits;
run the service through `python -m {{ cookiecutter.package_name }} serve`.
"""

from __future__ import annotations

from dataclasses import dataclass

# As h11, uvicorn's other HTTP protocol, allows: room for a large token (a remote issuer's, with
# many claims) and its cookies, while no connection's head costs more memory than this.
MAX_HEADER_BYTES = 16 * 1024
# Every body this API takes (a login or token form, an item of at most 200 characters) fits in
# a few KiB; FastAPI reads a body whole before it validates it, so this is what one request may
# make it hold.
# deploy/nginx.conf's `client_max_body_size` is the same 64k.
MAX_BODY_BYTES = 64 * 1024
# Descriptors a process needs besides its clients' connections: Redis connections
# (`APP_REDIS_MAX_CONNECTIONS` comes on top), the listening socket, the event loop, stdio, a key
# fetch, files. A process is allowed `APP_MAX_CONNECTIONS` + these + the Redis pool.
RESERVED_DESCRIPTORS = 64


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The limits that come from settings (`APP_HEADER_TIMEOUT_SECONDS`, `APP_MAX_CONNECTIONS`)."""

    header_timeout_seconds: float
    max_connections: int


def descriptor_problem(limits: EdgeLimits, redis_connections: int) -> str | None:
    """Make sure this process may open a descriptor for every connection it accepts (and its
    Redis connections): raise its soft limit (`ulimit -n`) up to the hard one where needed, as
    nginx and Go's runtime do. Returns why that cannot be done, in one line, or None."""
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return None
    needed = limits.max_connections + redis_connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (
            f"APP_MAX_CONNECTIONS: {limits.max_connections} connections (plus Redis and the "
            f"process's own files) need {needed} file descriptors, and this process may open "
            f"at most {hard} (ulimit -Hn); lower APP_MAX_CONNECTIONS or raise the limit"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (OSError, ValueError) as error:  # e.g. macOS caps it below an unlimited hard limit
        return f"APP_MAX_CONNECTIONS: cannot allow {needed} file descriptors: {error}"
    return None
