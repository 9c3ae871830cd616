"""A throwaway `redis-server` on a free loopback port, for tests that need a real Redis."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: the template's own tests load this file on its own
    from .tls import TlsFiles

NO_REDIS = (
    "These tests need a real Redis. Either set REDIS_URL "
    "(e.g. REDIS_URL=redis://127.0.0.1:6379/15), "
    "or install redis-server so the tests can start a throwaway one: "
    "`sudo apt-get install redis-server` (Debian/Ubuntu), `brew install redis` (macOS), "
    "or `docker compose up -d redis` and REDIS_URL=redis://:$REDIS_PASSWORD@127.0.0.1:6379/15."
)
START_TIMEOUT_SECONDS = 10
CLUSTER_BUS_PORT_OFFSET = 10000  # a cluster node also listens on its port + 10000
MAX_PORT = 65535
PORT_ATTEMPTS = 3  # ports tried by a first start (see `RedisServer.start`)


class PortTakenError(RuntimeError):
    """redis-server exited at start because its port was no longer free."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid port and free too.

    Ephemeral ports often lie above 55535, where the bus port would not exist and
    `redis-server --cluster-enabled yes` would exit at once.
    """
    while True:
        port = free_port()
        bus_port = port + CLUSTER_BUS_PORT_OFFSET
        if bus_port <= MAX_PORT and is_free(bus_port):
            return port


class RedisServer:
    """One `redis-server` process without persistence; it can be paused, stopped, restarted.

    With `tls`, it listens with TLS only (its `url` is `rediss://`); with `unix_socket`, also on
    a Unix socket (`unix_url`). `config` is passed on as further `--name value` arguments.
    """

    def __init__(
        self,
        password: str | None = None,
        cluster: bool = False,
        tls: TlsFiles | None = None,
        unix_socket: bool = False,
        config: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(NO_REDIS)
        self.binary = binary
        self.password = password
        self.cluster = cluster
        self.tls = tls
        self.port = free_cluster_port() if cluster else free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.socket_path = self.directory / "redis.sock" if unix_socket else None
        self.config = list(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.started = False  # once started, the port is the server's: a restart keeps it

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca_certificate}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket_path is not None
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}"

    def start(self) -> None:
        """Start the server. The port was free when chosen, but another process (or another
        node's cluster bus, port + 10000) may have taken it since: the first start then moves
        to a new port, a few times at most."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start()
            except PortTakenError:
                if self.started or attempt == PORT_ATTEMPTS:
                    raise
                self.port = free_cluster_port() if self.cluster else free_port()
                continue
            self.started = True
            return

    def _start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.tls:
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += [
                "--tls-cert-file", str(self.tls.certificate),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca_certificate),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.socket_path:
            command += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        command += self.config
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            self.wait_until_ready()
        except RuntimeError:  # it exited, or did not answer in time
            exited = self.process is not None and self.process.poll() is not None
            taken = exited and not self.ports_free()
            self.stop()
            if taken:
                raise PortTakenError(f"port {self.port} or its bus port was taken") from None
            raise

    def ports_free(self) -> bool:
        """Whether the server's port (and, in a cluster, its bus port) can be bound now."""
        ports = [self.port]
        if self.cluster:
            ports.append(self.port + CLUSTER_BUS_PORT_OFFSET)
        return all(is_free(port) for port in ports)

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with self._connect() as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
        if not self.tls:
            return sock
        context = ssl.create_default_context(cafile=self.tls.ca_certificate)
        context.check_hostname = False  # a readiness probe; the tests check names themselves
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self._wait_for_state("T")

    def _wait_for_state(self, state: str) -> None:
        """On Linux, wait until the kernel reports the process in `state` (T: stopped)."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                text = status.read_text()
            except OSError:
                return  # no procfs: SIGSTOP takes effect almost at once anyway
            # "pid (comm) state ...": the state follows the last parenthesis.
            fields = text.rpartition(")")[2].split()
            if not fields or fields[0] == state:
                return
            time.sleep(0.001)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:  # it has exited (and is reaped): nothing to signal
            self.process = None
            return
        self.resume()  # a stopped process cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crashed host would: no shutdown, no last words to clients
        or to the cluster. Its directory stays, so `start` brings back the same node (a cluster
        node keeps its identity in `nodes.conf`), with no data."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
