"""The served process bounds what a client can make it hold: header blocks, trailers and bodies.

These talk raw HTTP/1.1 over sockets to `python -m {{ cookiecutter.package_name }} serve`, because
the server's protocol (`server.py`, held to `edge_limits.py`) enforces the limits, below FastAPI
and below any test client.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.edge_limits import MAX_BODY_BYTES, MAX_HEADER_BYTES

from .helpers import add_user
from .served import Served, serve

USER = "trailer-tester"
SENDERS = 8  # concurrent clients of each kind in the memory test
SENT_PER_CLIENT = 8 * 1024 * 1024  # what each of them tries to send
MAX_GROWTH_MIB = 4  # peak RSS growth the server may show while they do
CHUNK = 64 * 1024
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.fixture(scope="module")
def served(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One served process for the whole module, with a user who may write."""
    with serve(redis_url, key_files, tmp_path_factory.mktemp("server-limits")) as process:
        add_user(process.settings, USER, scopes=["write"])
        yield process


def request_with_header_block(size: int, path: str = "/health/live") -> bytes:
    """A GET whose header block (request line to blank line, inclusive) is `size` bytes."""
    head = f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Padding: ".encode()
    end = b"\r\n\r\n"
    return head + b"p" * (size - len(head) - len(end)) + end


def exchange(port: int, *pieces: bytes, send_buffer: int | None = None) -> bytes:
    """Send `pieces` as separate writes, then read until the server closes the connection.

    A server that refuses a request answers and closes while the client may still be sending:
    the rest of what the client sends then meets a closed socket and gets a reset. The answer
    is still there to read (the kernel keeps what arrived before the reset), so a failed write
    ends the sending, not the exchange; a reset after the answer counts as its end.
    `send_buffer`: a small one makes each write wait for the server, as over a slow link."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if send_buffer is not None:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for piece in pieces:
                connection.sendall(piece)
        try:
            while chunk := connection.recv(CHUNK):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def statuses(answer: bytes) -> list[int]:
    """The status of each response in `answer` (a body ends where the next status line starts)."""
    return [int(status) for status in STATUS_LINE.findall(answer)]


def in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


@pytest.mark.parametrize("piece_size", [None, 1000, 7001], ids=["one write", "1000", "7001"])
def test_a_header_block_of_exactly_the_limit_is_served(
    served: Served, piece_size: int | None
) -> None:
    request = request_with_header_block(MAX_HEADER_BYTES)
    pieces = in_pieces(request, piece_size) if piece_size else [request]
    assert statuses(exchange(served.port, *pieces)) == [200]


@pytest.mark.parametrize("piece_size", [None, 1000, 7001], ids=["one write", "1000", "7001"])
def test_one_byte_more_is_refused_with_431(served: Served, piece_size: int | None) -> None:
    request = request_with_header_block(MAX_HEADER_BYTES + 1)
    pieces = in_pieces(request, piece_size) if piece_size else [request]
    answer = exchange(served.port, *pieces)
    assert statuses(answer) == [431], answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert {b"connection: close", b"cache-control: no-store"} <= set(head.lower().split(b"\r\n"))
    assert json.loads(body) == {"detail": "Request Header Fields Too Large"}


def test_many_small_pipelined_requests_are_all_answered(served: Served) -> None:
    """Three times the header limit of small requests in one write: the limit is per request."""
    one = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    count = 3 * MAX_HEADER_BYTES // len(one)
    last = b"GET /health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    assert statuses(exchange(served.port, one * count + last)) == [200] * (count + 1)


def test_a_pipelined_request_with_a_huge_header_block_is_refused(
    served: Served,
) -> None:
    first = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    second = request_with_header_block(4 * MAX_HEADER_BYTES)
    assert statuses(exchange(served.port, first + second)) == [200, 431]


def post_refresh(extra_headers: str) -> bytes:
    return (
        f"POST /auth/refresh HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\n{extra_headers}\r\n"
    ).encode()


def refresh_body(size: int) -> bytes:
    """A JSON body of exactly `size` bytes: a made-up refresh token, padded with spaces."""
    body = b'{"refresh_token": "made-up"}'
    return body + b" " * (size - len(body))


def test_a_body_of_exactly_the_limit_is_read(served: Served) -> None:
    body = refresh_body(MAX_BODY_BYTES)
    head = post_refresh(f"Content-Length: {len(body)}\r\n")
    assert statuses(exchange(served.port, head, body)) == [401]  # read, parsed, token refused


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    served: Served,
) -> None:
    """The answer comes after the headers alone: the server never waits for the body."""
    head = post_refresh(f"Content-Length: {MAX_BODY_BYTES + 1}\r\n")
    answer = exchange(served.port, head)
    assert statuses(answer) == [413]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"detail": "Content Too Large"}


def test_a_chunked_body_growing_over_the_limit_is_refused(served: Served) -> None:
    head = post_refresh("Transfer-Encoding: chunked\r\n")
    chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
    answer = exchange(served.port, head, chunk, chunk, b"0\r\n\r\n")
    assert statuses(answer) == [413], answer[:200]


def chunked(body: bytes) -> bytes:
    """`body` as one chunk, then the last chunk: what comes next is the trailer section."""
    return b"%x\r\n%s\r\n0\r\n" % (len(body), body)


def trailer_fields(size: int, name: bytes = b"X-Trailer") -> bytes:
    """Trailer fields of 1 KiB each (the last one shorter), `size` bytes in all."""
    line = name + b": " + b"t" * (1024 - len(name) - 4) + b"\r\n"
    count, rest = divmod(size, len(line))
    last = name + b"-last: " + b"t" * max(rest - len(name) - 9, 1) + b"\r\n" if rest else b""
    return line * count + last


def test_trailer_fields_are_read_but_never_reach_the_app(served: Served) -> None:
    """A trailer section of a few KiB is read to its end, and its fields are dropped: an
    `Authorization` sent as a trailer does not authenticate (uvicorn alone would append it to
    the request's headers, which the app reads after the body)."""
    token = served.service.login(USER)["access_token"]
    head = (
        b"POST /items HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    trailers = trailer_fields(4096) + b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    answer = exchange(served.port, head, chunked(b'{"text": "from a trailer"}'), trailers)
    assert statuses(answer) == [401], answer[:300]
    assert b"www-authenticate: bearer\r\n" in answer.lower()  # no credentials at all


def test_a_trailer_section_over_the_limit_is_refused_with_431(
    served: Served,
) -> None:
    """64 KiB of trailer fields, 1 KiB per write through a small send buffer (the server is
    still being sent to when it refuses): refused long before the end, and the client reads
    the 431."""
    head = post_refresh("Transfer-Encoding: chunked\r\n")
    body = chunked(b'{"refresh_token": "made-up"}')
    pieces = in_pieces(trailer_fields(4 * MAX_HEADER_BYTES), 1024)
    answer = exchange(served.port, head, body, *pieces, b"\r\n", send_buffer=2048)
    assert statuses(answer) == [431], answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "detail": "Request Header Fields Too Large"
    }


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def reset_peak_rss(pid: int) -> float:
    """Set the process's peak RSS to its current RSS (Linux: `5` into clear_refs); return it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_mib(pid)


def flood(port: int, start: bytes, piece: bytes, total: int) -> None:
    """Send `start`, then `piece` until `total` bytes or until the server closes; never finish
    the request (a server that buffers it all would wait for the rest)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as connection,
        contextlib.suppress(ConnectionResetError, BrokenPipeError),
    ):
        connection.sendall(start)
        for _ in range(total // len(piece)):
            connection.sendall(piece)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_clients_sending_megabytes_cost_the_server_almost_no_memory(
    served: Served,
) -> None:
    """Eight clients each send 8 MiB of one header, eight more 8 MiB of chunked body, eight
    more 8 MiB of trailer fields after a chunked body, all at once. Buffered, that would be
    nearly 200 MiB; the server's peak RSS moves by a few MiB."""
    port, pid = served.port, served.service.process.pid
    floods = [
        (b"GET /me HTTP/1.1\r\nHost: test\r\nX-Flood: ", b"f" * CHUNK),
        (post_refresh("Transfer-Encoding: chunked\r\n"), b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)),
        (post_refresh("Transfer-Encoding: chunked\r\n") + chunked(b"{}"), trailer_fields(CHUNK)),
    ]
    assert statuses(exchange(port, request_with_header_block(200))) == [200]  # warm
    before = reset_peak_rss(pid)
    with ThreadPoolExecutor(max_workers=len(floods) * SENDERS) as pool:
        for future in [
            pool.submit(flood, port, start, piece, SENT_PER_CLIENT)
            for start, piece in floods
            for _ in range(SENDERS)
        ]:
            future.result()
    assert statuses(exchange(port, request_with_header_block(200))) == [200]  # still serving
    growth = peak_rss_mib(pid) - before
    assert growth <= MAX_GROWTH_MIB, f"peak RSS grew {growth:.1f} MiB"
