"""The one middleware (pure ASGI): request ids, request lines, request metrics and, with tracing
on, each request's server span."""

from __future__ import annotations

import logging
import re
import secrets
import time
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .logs import PACKAGE, REQUEST_ID
from .network import IPNetwork, client_address
from .shutdown import Drain
from .tracing import Tracing

REQUEST_ID_HEADER = b"x-request-id"
# While the process drains (shutdown.py), every answer closes its connection.
CONNECTION_CLOSE = (b"connection", b"close")
# Ids a client may choose: short, and nothing a log reader could mistake for structure.
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")

# When a client breaks a limit of the edge (server.py) while the app reads its body (a stalled
# body, an oversized chunked body or trailer section), the server answers it itself and drops
# the app's answer; it records its own status in the request's scope under this extension, so
# the request line says what the client got (408, 413, 431), not the app's answer to a vanished
# body.
EDGE_REFUSAL = f"{PACKAGE}.edge-refusal"

access_logger = logging.getLogger(f"{PACKAGE}.access")


class RequestLog:
    """The one middleware: a request id for every HTTP request, a log line and a metric after
    its answer. Pure ASGI, so it costs a function call and a closure, not a Request object.

    The id is the client's `X-Request-ID` when it matches `CLIENT_REQUEST_ID` (so a request can
    be followed through a proxy or a caller's own logs) and is the request's only one, otherwise
    a fresh one. With two or more, none is kept: a proxy may have logged another than the one
    we would pick, and the two logs would then disagree about which request it was. A fresh id:
    `secrets.token_hex(8)`, 64 random bits, unique enough to find a request among billions, and
    unlike a counter it tells a client nothing about how busy the service is. Either way it is
    sent back on the answer and held in `REQUEST_ID` while the request runs, for every line
    logged meanwhile; it is kept nowhere else.

    While `drain` has started, every answer also carries `Connection: close` (the server then
    closes the connection after it), so that a proxy keeps no idle connection to a process
    that is about to stop.
    """

    def __init__(
        self,
        app: ASGIApp,
        trusted_proxies: tuple[IPNetwork, ...] = (),
        drain: Drain | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies
        self.drain = drain or Drain()
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, WebSocket: no request line, no id
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if request_id is not None:  # a second one: neither is kept
                    request_id = None
                    break
                request_id = value
        if request_id is None or not CLIENT_REQUEST_ID.fullmatch(request_id):
            request_id = secrets.token_hex(8).encode()
        header = (REQUEST_ID_HEADER, request_id)
        status = 500  # what the server answers if the app raises before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new list: the app's may belong to a Response object that is sent again.
                message["headers"] = [*message.get("headers", ()), header]
                if self.drain.started:
                    message["headers"].append(CONNECTION_CLOSE)
            await send(message)

        reset = REQUEST_ID.set(request_id.decode())
        span = self.tracing.start_request(scope) if self.tracing is not None else None
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            refusal = scope.get("extensions", {}).get(EDGE_REFUSAL)
            if refusal is not None:
                status = refusal["status"]
            route = metrics.route_of(scope)
            # The span ends and the id is reset even if the count or the line raised (a log
            # handler that fails, say): otherwise the task would keep both attached.
            try:
                metrics.observe_request(scope["method"], route, status, seconds)
                if access_logger.isEnabledFor(logging.INFO):  # nothing built for no one
                    self.log(scope, status, seconds)
            finally:
                if span is not None:  # after the request line, which carries its ids
                    span.end(scope["method"], route, status)
                REQUEST_ID.reset(reset)

    def log(self, scope: Scope, status: int, seconds: float) -> None:
        """The request line. The client is the one the rate limits see (`client_address`):
        behind a proxy the socket peer is always the proxy, which says nothing."""
        peer = scope["client"][0] if scope.get("client") else None
        forwarded_for = None
        if self.trusted_proxies:
            forwarded_for = ",".join(
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == b"x-forwarded-for"
            )
        client = client_address(peer, forwarded_for, self.trusted_proxies)
        # Percent-encoded as uvicorn does: a decoded path may hold newlines or other controls.
        path = quote(scope["path"])
        method, milliseconds = scope["method"], round(seconds * 1000, 3)
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d %.1f ms %s',
            client,
            method,
            path,
            scope["http_version"],
            status,
            milliseconds,
            REQUEST_ID.get(),  # for the text format; JSON lines have their own field
            extra={
                "client": client,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": milliseconds,
            },
        )
