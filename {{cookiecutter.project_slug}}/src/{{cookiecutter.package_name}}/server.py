"""The HTTP protocol `serve` hands to uvicorn: uvicorn's httptools protocol, held to the edge's
limits (`edge_limits.py` lists each refusal and the limit it enforces).

uvicorn's httptools protocol keeps reading a request's header block for as long as it lasts (h11
stops at 16 KiB; httptools has no limit), appends every trailer field of a chunked body to the
request's headers, waits for ever for a client that stops sending, and accepts connections until
the process runs out of file descriptors. FastAPI reads a whole body into memory before it
validates it. The protocol below refuses instead: 431 for a header block or a trailer section
too long, 413 for a body too long, 408 for a client too slow, 503 for a connection too many.

Every answer has the body every error of the service has, `{"detail": ...}`. The connection is
closed after it, and nothing is logged per refusal: a refusal costs the server no more than the
bytes it read, and a flood of them must not turn into a flood of log lines. (The connection
limit logs uvicorn's own "Exceeded concurrency limit." line, which `logs.RepeatedClientWarnings`
lets through once per window.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .edge_limits import MAX_BODY_BYTES, MAX_HEADER_BYTES, EdgeLimits
from .middleware import EDGE_REFUSAL

# While a chunked body is read, the parser is fed at most this much at a time. The bytes of a
# piece that are not body (chunk-size lines, the trailer section) are counted against the
# trailer budget; counted per piece, the count can run ahead of the truth by less than a piece,
# so pieces are kept small. A chunked upload of 64 KiB costs 64 calls into the parser.
CHUNKED_PIECE_BYTES = 1024

REASONS = {  # RFC 9110's names (Python's own phrase for 413 changed between versions)
    HTTPStatus.REQUEST_TIMEOUT: b"Request Timeout",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: b"Content Too Large",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: b"Request Header Fields Too Large",
    HTTPStatus.SERVICE_UNAVAILABLE: b"Service Unavailable",
}
BEGUN = -1  # a header block began during the bytes being fed; its size is not known yet
CONCURRENCY_WARNING = "Exceeded concurrency limit."  # uvicorn's words (see logs.CLIENT_WARNINGS)


def bounded_protocol(limits: EdgeLimits) -> Callable[..., BoundedHttpToolsProtocol]:
    """What `serve` passes to uvicorn as its HTTP protocol: uvicorn calls it as it would call
    the class. A partial of module-level objects, so `--workers` can hand it to its processes."""
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)


def header_block_start(data: bytes) -> int:
    """Where, at the latest, an unfinished header block at the end of `data` begins: after the
    last blank line (CRLF CRLF, or LF LF, which llhttp also accepts)."""
    crlf, lf = data.rfind(b"\r\n\r\n"), data.rfind(b"\n\n")
    return max(crlf + 4 if crlf >= 0 else 0, lf + 2 if lf >= 0 else 0)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on header blocks, trailers, bodies, time spent
    waiting for a client, and connections.

    Sizes: the bytes of the header block being read are counted as they are fed to the parser.
    A read that could take the block past the limit is fed only up to it; if the block is still
    unfinished then, the request is refused. The count is exact for the first request of a read;
    for a request pipelined behind another one's body in the same read it may include the tail
    of that body (never less than the truth), so such a request may be refused a little early.
    A chunked body is fed in pieces of `CHUNKED_PIECE_BYTES`, and the bytes of each that are not
    body are counted, from the last body byte on, against what the header block left of
    `MAX_HEADER_BYTES`; the piece in which the first chunk begins is not counted (it holds the
    end of the header block), so a trailer section may overrun its budget by up to one read
    before it is refused.

    Time: one timer per connection, armed only while the server waits for a request head (from
    the connection, or from the head's first byte) or for more of a body (from the last body
    byte). Time the server itself holds a client up (reading paused behind earlier pipelined
    requests or a full body buffer, an app that has not asked for a body it must `100 Continue`)
    does not count.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: EdgeLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._header_bytes: int | None = None  # None: no header block is being read
        self._body_bytes = 0
        self._refused = False  # past a limit: what else arrives is dropped unread
        self._refusal: HTTPStatus | None = None  # to send once earlier answers are out
        # Chunked bodies: None until a chunk begins; then the non-body bytes since the last body
        # byte, against `_trailer_room` (what the header block left of MAX_HEADER_BYTES).
        self._framing: int | None = None
        self._trailer_room = 0
        self._uncounted_piece = False  # the piece in which counting began
        self._piece_body = 0  # body bytes delivered by the piece being fed
        # What the server waits for from the client, since when, and the one timer for it.
        self._waiting: Literal["connection", "head", "body"] | None = None
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # Connections -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self.logger.warning(CONCURRENCY_WARNING)
            self._refused = True
            self._write_refusal(HTTPStatus.SERVICE_UNAVAILABLE, retry_after=1)
            self.transport.close()
            return
        self._wait_for("connection")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:  # a pending timer would keep this protocol alive
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    # Feeding the parser ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if len(data) <= self._room():  # nearly always: a whole request, or a part of a body
            self._feed(data)
        else:
            view = memoryview(data)  # slices of a memoryview copy nothing
            while view and not self._refused and not self.transport.is_closing():
                room = self._room()
                self._feed(view[:room])
                view = view[room:]
        if self._waiting is not None and self._timer is None and not self._refused:
            self._arm_timer()

    def _room(self) -> int:
        """How many bytes may be fed before a limit must be checked again."""
        if self._framing is not None:  # at least a byte: the check after it refuses
            return max(1, min(CHUNKED_PIECE_BYTES, self._trailer_room - self._framing))
        return MAX_HEADER_BYTES - (self._header_bytes or 0)

    def _feed(self, data: bytes | memoryview) -> None:
        self._piece_body = 0
        super().data_received(data)  # type: ignore[arg-type]  # httptools takes any buffer
        if self.transport.is_closing():
            return
        if self._header_bytes is not None:
            if self._header_bytes == BEGUN:
                self._header_bytes = len(data) - header_block_start(bytes(data))
            else:
                self._header_bytes += len(data)
            if self._header_bytes >= MAX_HEADER_BYTES:  # unfinished at the limit: over it
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, during_request=False)
        elif self._framing is not None:  # inside a chunked body, still
            if self._uncounted_piece:
                self._uncounted_piece = False
            elif self._piece_body:  # at most this much of the piece came after its last body byte
                self._framing = len(data) - self._piece_body
            else:
                self._framing += len(data)
            if self._framing >= self._trailer_room:  # unfinished at the limit: over it
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, during_request=True)

    # Parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = BEGUN
        self._body_bytes = 0
        self._framing = None
        if self._waiting == "connection":  # a new connection's first head: timed from its start
            self._waiting = "head"
        else:
            self._wait_for("head")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._framing is None:  # a field of the header block; else a trailer field: dropped
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        if self._refused:
            return
        if self._declared_body_length() > MAX_BODY_BYTES:
            # Refused before the app is called: no request object, no body read.
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, during_request=False)
            return
        self._wait_for("body")  # a request without a body completes at once, ending the wait
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        if self._framing is None:  # the first chunk: count from here, against what is left
            self._framing = 0
            self._trailer_room = MAX_HEADER_BYTES - self._parsed_head_bytes()
            self._uncounted_piece = True

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._piece_body += len(body)
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:  # a chunked body, which declares no length
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, during_request=True)
            return
        self._since = self.loop.time()  # the body is still arriving
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._framing = None
        self._waiting = None
        if not self._refused:
            super().on_message_complete()

    def _declared_body_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() else 0  # llhttp has checked the digits
        return 0

    def _parsed_head_bytes(self) -> int:
        """The size of the header block as parsed, never more than it was: the request line,
        each field as `name:value` and its line end (without the whitespace a client may add),
        and the blank line."""
        line = len(self.scope["method"]) + len(self.url) + len(" HTTP/1.1\r\n") + 1
        return line + sum(len(name) + len(value) + 3 for name, value in self.headers) + 2

    def handle_websocket_upgrade(self) -> None:
        self._waiting = None  # the WebSocket protocol takes the connection over, with its timers
        super().handle_websocket_upgrade()

    # Time --------------------------------------------------------------------------------------

    def _wait_for(self, what: Literal["connection", "head", "body"]) -> None:
        self._waiting = what
        self._since = self.loop.time()
        if what == "connection":  # nothing may ever arrive to arm it later
            self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._since + self._limits.header_timeout_seconds
        self._timer = self.loop.call_at(deadline, self._check_timer)

    def _check_timer(self) -> None:
        self._timer = None
        if self._waiting is None or self._refused or self.transport.is_closing():
            return
        if self._held_up_by_us():
            self._since = self.loop.time()
        if self.loop.time() < self._since + self._limits.header_timeout_seconds:
            self._arm_timer()  # progress since the timer was set, or the wait is ours
            return
        waiting, self._waiting = self._waiting, None
        if waiting == "connection":  # not one byte sent: nothing to answer
            self._refused = True
            self.transport.close()
        else:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, during_request=waiting == "body")

    def _held_up_by_us(self) -> bool:
        """The client cannot send because of the server: reading is paused (behind earlier
        pipelined requests, or a full body buffer), or it waits for a `100 Continue`."""
        cycle = self.cycle
        waiting_for_100 = cycle is not None and cycle.waiting_for_100_continue
        return self.flow.read_paused or (self._waiting == "body" and waiting_for_100)

    # Refusals ----------------------------------------------------------------------------------

    def _refuse(self, status: HTTPStatus, *, during_request: bool) -> None:
        """Answer `status` and close; nothing more of this connection is parsed.

        `during_request`: the request the app is working on broke the limit (a chunked body, a
        stalled body). Otherwise a new request did, and earlier requests pipelined on this
        connection get their answers first.
        """
        self._refused = True
        self._waiting = None
        cycle = self.cycle  # the request being answered, or the last one before
        if during_request:
            if not cycle.response_started:
                self._write_refusal(status)
                refusal: dict[object, object] = {"status": int(status)}
                cycle.scope.setdefault("extensions", {})[EDGE_REFUSAL] = refusal
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

    def _write_refusal(self, status: HTTPStatus, retry_after: int | None = None) -> None:
        reason = REASONS[status]
        body = b'{"detail":"%s"}' % reason
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        defaults = self.server_state.default_headers  # date (and server, when enabled)
        head += [name + b": " + value + b"\r\n" for name, value in defaults]
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"cache-control: no-store\r\npragma: no-cache\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
