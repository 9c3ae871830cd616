"""A small real HTTP server playing a token issuer's key endpoints, for the remote-mode tests.

It serves a JWK Set at `/jwks.json` and a discovery document (at
`/.well-known/openid-configuration`, or where `discovery_path` says), counts the requests for
each, and can misbehave on demand: answer garbage, answer too much, answer slowly, or be down
(not listening at all). It runs in a thread of the test process; no HTTP client is mocked.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .redis_server import free_port

JWKS_PATH = "/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"


class KeyServer:
    """`start()` listens, `stop()` stops listening (connections are refused), on one port.

    `stop()` returns only once every answer in progress is over, so no request the service sent
    earlier is counted after it: a test may clear `requests` then and count afresh.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.jwks_url = self.base_url + JWKS_PATH
        self.requests: Counter[str] = Counter()  # path -> requests answered or started
        self.traceparents: list[str] = []  # the `traceparent` of each request that had one
        self.keys: list[dict[str, Any]] = []
        self.body: bytes | None = None  # when set, served instead of `keys`
        self.status = 200
        self.cache_control = "max-age=300"
        self.delay_seconds = 0.0
        self.issuer = self.base_url  # what the discovery document says
        # Where it is served: an OpenID Provider's place, or an RFC 8414 one (e.g.
        # /.well-known/oauth-authorization-server/tenant for the issuer <base>/tenant).
        self.discovery_path = DISCOVERY_PATH
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def serve(self, *keys: dict[str, Any]) -> None:
        """Serve these JWKs as the set, well behaved again."""
        self.keys, self.body, self.status, self.delay_seconds = list(keys), None, 200, 0.0

    def fetches(self) -> int:
        with self._lock:
            return self.requests[JWKS_PATH]

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that connects and sends nothing cannot hold up stop()

            def do_GET(self) -> None:
                with server._lock:
                    server.requests[self.path] += 1
                    if traceparent := self.headers.get("traceparent"):
                        server.traceparents.append(traceparent)
                if server.delay_seconds:
                    server._stopping.wait(server.delay_seconds)
                if self.path == JWKS_PATH:
                    body = server.body
                    if body is None:
                        body = json.dumps({"keys": server.keys}).encode()
                elif self.path == server.discovery_path:
                    document = {"issuer": server.issuer, "jwks_uri": server.jwks_url}
                    body = json.dumps(document).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", server.cache_control)
                self.end_headers()
                # The client may give up first (its size cap or timeout): expected here.
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the counts above are what the tests read

        self._stopping.clear()
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = False  # server_close() waits for the answers in progress
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # a slow answer in progress ends now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the threads still answering
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
