"""A throwaway three-master Redis Cluster of `redis-server` processes on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time

from .redis_server import RedisServer

MASTERS = 3
FORM_TIMEOUT_SECONDS = 20


class RedisClusterServers:
    """Start three cluster-enabled servers and join them with `redis-cli --cluster create`."""

    def __init__(self) -> None:
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise FileNotFoundError("redis-cli (it comes with redis-server)")
        self.redis_cli = redis_cli
        self.nodes = [RedisServer(cluster=True) for _ in range(MASTERS)]

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> None:
        """Start and join the nodes; on any failure, stop those already started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [self.redis_cli, "--cluster", "create", *addresses]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=FORM_TIMEOUT_SECONDS,
        )
        self.wait_until_formed()

    def wait_until_formed(self) -> None:
        deadline = time.monotonic() + FORM_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.cluster_info(node.port) for node in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def cluster_info(self, port: int) -> str:
        command = [self.redis_cli, "-p", str(port), "cluster", "info"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
        return result.stdout

    def close(self) -> None:
        for node in self.nodes:
            node.close()
