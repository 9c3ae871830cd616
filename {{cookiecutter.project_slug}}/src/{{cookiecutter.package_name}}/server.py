"""What a client may make the server hold before the app sees a request: bounded.

uvicorn's httptools protocol keeps reading a request's header block for as long as it lasts (h11
stops at 16 KiB; httptools has no limit), and FastAPI reads a whole body into memory before it
validates it. Eight clients each sending a 64 MiB header would take hundreds of MiB. The protocol
below, which `serve` hands to uvicorn, refuses instead:

- a header block (request line and headers) longer than `MAX_HEADER_BYTES`: 431, before more of
  it is read;
- a body declared longer than `MAX_BODY_BYTES`: 413, before any of it is read and before the app
  is called; a chunked body that grows past it: 413 (or, once the app has begun its answer, the
  connection is simply closed).

Both answers have the body every error of the service has, `{"detail": ...}`. The connection
is closed after either, and nothing is logged: a refusal costs the server no more
than the bytes it read, and a flood of them must not turn into a flood of log lines.

Raise `MAX_BODY_BYTES` if you add routes that take uploads (and `client_max_body_size` in
`deploy/nginx.conf` with it). `uvicorn --factory ...main:create_app` serves without these limits;
run the service through `python -m {{ cookiecutter.package_name }} serve`.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

# RFC 9110's names (Python's own phrase for 413 changed between versions).
REASONS = {
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: b"Content Too Large",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: b"Request Header Fields Too Large",
}
BEGUN = -1  # a header block began during the bytes being fed; its size is not known yet


def header_block_start(data: bytes) -> int:
    """Where, at the latest, an unfinished header block at the end of `data` begins: after the
    last blank line (CRLF CRLF, or LF LF, which llhttp also accepts)."""
    crlf, lf = data.rfind(b"\r\n\r\n"), data.rfind(b"\n\n")
    return max(crlf + 4 if crlf >= 0 else 0, lf + 2 if lf >= 0 else 0)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on header blocks and on bodies.

    The bytes of the header block being read are counted as they are fed to the parser. A read
    that could take the block past the limit is fed only up to it; if the block is still
    unfinished then, the request is refused. The count is exact for the first request of a read;
    for a request pipelined behind another one's body in the same read it may include the tail
    of that body (never less than the truth), so such a request may be refused a little early.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_bytes: int | None = None  # None: no header block is being read
        self._body_bytes = 0
        self._refused = False  # past a limit: what else arrives is dropped unread
        self._refusal: HTTPStatus | None = None  # to send once earlier answers are out

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if len(data) <= self._room():  # nearly always: a whole request, or a part of a body
            self._feed(data)
            return
        view = memoryview(data)  # slices of a memoryview copy nothing
        while view and not self._refused and not self.transport.is_closing():
            room = self._room()
            self._feed(view[:room])
            view = view[room:]

    def _room(self) -> int:
        """How many bytes may be fed before the header block in progress must have ended."""
        return MAX_HEADER_BYTES - (self._header_bytes or 0)

    def _feed(self, data: bytes | memoryview) -> None:
        super().data_received(data)  # type: ignore[arg-type]  # httptools takes any buffer
        if self._header_bytes is None or self.transport.is_closing():
            return
        if self._header_bytes == BEGUN:
            self._header_bytes = len(data) - header_block_start(bytes(data))
        else:
            self._header_bytes += len(data)
        if self._header_bytes >= MAX_HEADER_BYTES:  # unfinished at the limit: over it
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, during_request=False)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = BEGUN
        self._body_bytes = 0

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        if self._refused:
            return
        if self._declared_body_length() > MAX_BODY_BYTES:
            # Refused before the app is called: no request object, no body read.
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, during_request=False)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:  # a chunked body, which declares no length
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, during_request=True)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _declared_body_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() else 0  # llhttp has checked the digits
        return 0

    def _refuse(self, status: HTTPStatus, *, during_request: bool) -> None:
        """Answer `status` and close; nothing more of this connection is parsed.

        `during_request`: the request the app is working on broke the limit (a chunked body).
        Otherwise a new request did, and earlier requests pipelined on this connection get
        their answers first.
        """
        self._refused = True
        cycle = self.cycle  # the request being answered, or the last one before
        if during_request:
            if not cycle.response_started:
                self._write_refusal(status)
            cycle.disconnected = True  # the app gets no more body, and its answer is dropped
            cycle.message_event.set()
            self.transport.close()
        elif self.pipeline or (cycle is not None and not cycle.response_complete):
            self._refusal = status  # sent by on_response_complete after the last of them
            self.transport.pause_reading()
        else:
            self._write_refusal(status)
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is None or self.transport.is_closing():
            return
        if not self.pipeline and self.cycle.response_complete:  # the last earlier answer is out
            self._write_refusal(self._refusal)
            self.transport.close()

    def _write_refusal(self, status: HTTPStatus) -> None:
        reason = REASONS[status]
        body = b'{"detail":"%s"}' % reason
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        defaults = self.server_state.default_headers  # date (and server, when enabled)
        head += [name + b": " + value + b"\r\n" for name, value in defaults]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\npragma: no-cache\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
