"""Clients that send a request and vanish with a TCP reset cost the served process nothing lasting.

A client that resets its connection (SO_LINGER 0) right after its request never reads the answer.
The server still runs the request, and holds the connection and its buffers until it sees the
reset or, at the latest, until the keep-alive timeout ends it (`serve` sets it:
`cli.KEEP_ALIVE_SECONDS`). So memory may rise with a burst of them and must come back down:
after N such clients and after 2N, once their connections are gone, the process's RSS is the
same within a few MiB, and no client connection is left open.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.cli.serve import KEEP_ALIVE_SECONDS

from .served import Served

CLIENTS_PER_ROUND = 2000
SENDERS = 8
MAX_GROWTH_MIB = 4
# How long the test waits for the held connections to go: the keep-alive timeout plus room for
# a loaded machine. A server that kept them for good would never get there.
RELEASE_DEADLINE_SECONDS = KEEP_ALIVE_SECONDS + 25
# /health/ready awaits Redis, so the reset comes while the app is still busy with the request.
REQUEST = b"GET /health/ready HTTP/1.1\r\nHost: test\r\n\r\n"
LISTEN = "0A"


def send_and_reset(port: int, clients: int) -> None:
    for _ in range(clients):
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(REQUEST)
        time.sleep(0)  # let the request leave before the reset
        # Linger on, for 0 s: close() sends RST instead of FIN and drops unsent data.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def tcp_table() -> dict[str, tuple[int, str]]:
    """Each socket's inode, with its local port and state (Linux /proc/net/tcp*); Unix sockets
    (asyncio's own) with port 0."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), fields[3])
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        table[line.split()[6]] = (0, "")
    return table


def client_connections(pid: int, port: int) -> int:
    """The process's sockets that are (or were) connections from clients on `port`: not the
    listening socket, not its Redis connections. A socket reset by its client is no longer in
    the kernel's tables, so it counts too while the process holds it."""
    table = tcp_table()
    folder = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(folder):
        try:
            target = os.readlink(folder / fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if not target.startswith("socket:["):
            continue
        local_port, state = table.get(target[len("socket:[") : -1], (port, "07"))  # 07: closed
        count += local_port == port and state != LISTEN
    return count


def round_of_resets(pid: int, port: int) -> tuple[int, float]:
    """One burst of resetting clients; the most sockets seen open right after it, and the RSS
    once they are all closed again."""
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        for sent in [
            pool.submit(send_and_reset, port, CLIENTS_PER_ROUND // SENDERS) for _ in range(SENDERS)
        ]:
            sent.result()
    held = client_connections(pid, port)
    deadline = time.monotonic() + RELEASE_DEADLINE_SECONDS
    while client_connections(pid, port) > 0:
        assert time.monotonic() < deadline, (
            f"{client_connections(pid, port)} reset connections still open after "
            f"{RELEASE_DEADLINE_SECONDS} s"
        )
        time.sleep(0.5)
    return held, rss_mib(pid)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_memory_plateaus_under_clients_that_reset_after_their_request(served: Served) -> None:
    port, pid = served.port, served.service.process.pid
    held, after_n = round_of_resets(pid, port)
    _, after_2n = round_of_resets(pid, port)
    print(
        f"connections held after a burst: {held}; "
        f"RSS after {CLIENTS_PER_ROUND}: {after_n:.1f} MiB, after {2 * CLIENTS_PER_ROUND}: "
        f"{after_2n:.1f} MiB"
    )
    assert after_2n - after_n <= MAX_GROWTH_MIB
