"""A throwaway Redis Cluster of `redis-server` processes on loopback ports: three primaries, and
optionally replicas for each, which take over when their primary dies."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis import Redis
from redis.crc import key_slot

from .redis_server import RedisServer

MASTERS = 3
FORM_TIMEOUT_SECONDS = 20
POLL_SECONDS = 0.05
MAX_NAMES = 10_000  # tried by `users_by_primary`: with three primaries, a few dozen suffice


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One line of `CLUSTER NODES`, as one node sees another (or itself)."""

    node_id: str
    port: int
    flags: frozenset[str]  # myself, master, slave, fail, fail?, ...
    primary_id: str | None  # for a replica, its primary's id
    slots: tuple[tuple[int, int], ...]  # owned ranges, first and last slot included

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags and not {"fail", "fail?"} & self.flags

    def owns(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


def parse_nodes(text: str) -> list[ClusterNode]:
    nodes = []
    for line in text.splitlines():
        # <id> <ip:port@bus-port> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...
        fields = line.split()
        node_id, address, flags, primary = fields[:4]
        slots = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated: not owned yet
                continue
            first, _, last = part.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNode(
                node_id=node_id,
                port=int(address.split("@")[0].rsplit(":", 1)[1]),
                flags=frozenset(flags.split(",")),
                primary_id=None if primary == "-" else primary,
                slots=tuple(slots),
            )
        )
    return nodes


class RedisClusterServers:
    """Start `MASTERS` primaries and `replicas` replicas of each (`config`: more server
    arguments for every node), joined with `redis-cli --cluster create`."""

    def __init__(self, replicas: int = 0, config: Sequence[str] = ()) -> None:
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise FileNotFoundError("redis-cli (it comes with redis-server)")
        self.redis_cli = redis_cli
        self.replicas = replicas
        count = MASTERS * (1 + replicas)
        self.nodes = [RedisServer(cluster=True, config=config) for _ in range(count)]

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
            [*create, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=FORM_TIMEOUT_SECONDS,
        )
        self.wait_until_formed()

    def wait_until_formed(self) -> None:
        """Every node reports `cluster_state:ok`, the first node sees every replica as one (a
        replica is a primary without slots until the others learn its role), and every replica
        has its primary's data."""
        self.wait_until(
            lambda: (
                all("cluster_state:ok" in self.cluster_info(node.port) for node in self.nodes)
                and len(replicas := self.replica_ports()) == MASTERS * self.replicas
                and all(self.replica_in_sync(port) for port in replicas)
            ),
            "the Redis Cluster did not form",
            FORM_TIMEOUT_SECONDS,
        )

    def cluster_info(self, port: int) -> str:
        command = [self.redis_cli, "-p", str(port), "cluster", "info"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
        return result.stdout

    def view(self, port: int) -> list[ClusterNode]:
        """The cluster as the node on `port` sees it."""
        with Redis(port=port, decode_responses=True, socket_timeout=5) as client:
            # Two words, so that redis-py leaves the reply as text instead of parsing it.
            text = client.execute_command("CLUSTER", "NODES")
        return parse_nodes(str(text))

    def primary_port(self, slot: int, seen_from: int | None = None) -> int:
        """The port of the primary that owns `slot` (as the first live node, or `seen_from`,
        sees it)."""
        port = seen_from if seen_from is not None else self.live_ports()[0]
        (owner,) = [node for node in self.view(port) if node.is_primary and node.owns(slot)]
        return owner.port

    def replica_port(self, primary_port: int) -> int:
        """The port of the (first) replica of the primary on `primary_port`."""
        nodes = self.view(primary_port)
        (primary,) = [node for node in nodes if node.port == primary_port]
        return next(node.port for node in nodes if node.primary_id == primary.node_id)

    def replica_ports(self) -> list[int]:
        return [node.port for node in self.view(self.nodes[0].port) if "slave" in node.flags]

    def replica_in_sync(self, port: int) -> bool:
        with Redis(port=port, decode_responses=True, socket_timeout=5) as client:
            info = client.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    def live_ports(self) -> list[int]:
        return [node.port for node in self.nodes if node.process is not None]

    def server(self, port: int) -> RedisServer:
        (server,) = [node for node in self.nodes if node.port == port]
        return server

    def all_see_primary(self, slot: int, port: int) -> bool:
        """Whether every live node sees the node on `port` as the healthy primary of `slot`."""
        try:
            return all(
                self.primary_port(slot, seen_from=live) == port for live in self.live_ports()
            )
        except ValueError:  # no healthy owner in some node's view yet
            return False

    def users_by_primary(self, per_primary: int, prefix: str) -> dict[int, list[str]]:
        """`per_primary` user names (`prefix` and a number) for each primary, by its port: the
        slot of each name's hash tag (`{name}`) is one the primary owns."""
        view = self.view(self.live_ports()[0])
        ports = {node.port for node in view if node.is_primary and node.slots}
        users: dict[int, list[str]] = {port: [] for port in ports}
        number = 0
        while any(len(names) < per_primary for names in users.values()):
            if number > MAX_NAMES:  # a primary owns no slot after all: fail, never hang
                raise AssertionError(f"no {per_primary} names for each primary of {view}")
            name = f"{prefix}{number}"
            names = users[self.primary_port(key_slot(name.encode()))]
            if len(names) < per_primary:
                names.append(name)
            number += 1
        return users

    def checkpoint(self, port: int, key: str) -> float:
        """Wait until the replica of the primary on `port` holds everything that primary wrote
        before this call. Replication is one ordered stream, so a write of our own (to `key`,
        which must live on that primary) and `WAIT` for it cover every earlier write. Returns
        the time this began: whatever the primary acknowledged before it is now replicated."""
        began = time.monotonic()
        with Redis(port=port, socket_timeout=FORM_TIMEOUT_SECONDS) as primary:
            primary.set(key, "1", px=60_000)
            assert primary.wait(1, FORM_TIMEOUT_SECONDS * 1000) == 1
        return began

    def wait_for_promotion(
        self, replica: int, since: float, timeout_seconds: float
    ) -> tuple[float, float]:
        """Poll the replica on `replica` until it calls itself a primary. Returns when the last
        poll that still found it a replica was sent (it was not promoted before then; `since`
        if no poll did) and when the promotion was seen."""
        not_before = since

        def promoted() -> bool:
            nonlocal not_before
            asked = time.monotonic()
            (myself,) = [node for node in self.view(replica) if "myself" in node.flags]
            if "master" not in myself.flags:
                not_before = asked
            return "master" in myself.flags

        seen = self.wait_until(promoted, "the replica was not promoted", timeout_seconds)
        return not_before, seen

    @staticmethod
    def wait_until(done: Callable[[], bool], what: str, timeout_seconds: float) -> float:
        """Poll `done` until it holds; return when (monotonic seconds) it was first seen."""
        deadline = time.monotonic() + timeout_seconds
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout_seconds} s")
            time.sleep(POLL_SECONDS)
        return time.monotonic()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
