"""A failover behind one address (a managed endpoint, a Sentinel-aware proxy), under load.

A forwarder (`forwarder.py`) stands for the endpoint, in front of a primary and its replica.
The failover goes the way such endpoints do it: the replica is promoted (`REPLICAOF NO ONE`),
the endpoint sends new connections to it, and the old primary becomes its replica, while the
connections already open to the old primary stay open. Every write on those connections is then
answered `READONLY`. The service must drop them and dial again, through the same address, which
now reaches the new primary (see `failover.py`).

Why the forwarder covers Sentinel too: the service has no Sentinel discovery of its own; the
README tells a self-run Sentinel's users to put a Sentinel-aware proxy in front of it, and what
the service sees through such a proxy is what it sees here: one address, connections that
outlive a failover, `READONLY` on the ones left on the demoted server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import make_settings, running
from .forwarder import Forwarder
from .helpers import add_user, login
from .redis_server import RedisServer
from .traffic import Traffic, assert_only_503s_and_late_writes_lost, statuses_of_sessions

pytestmark = pytest.mark.anyio

READERS = 4
CYCLERS = 2
WARM_UP_SECONDS = 2.0
STEADY_SECONDS = 3.0  # traffic after the old primary has caught up as a replica
SYNC_CEILING_SECONDS = 20  # a full resynchronisation of a few hundred keys takes milliseconds
POLL_SECONDS = 0.05


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, in sync."""
    try:
        primary, replica = RedisServer(), RedisServer()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    try:
        primary.start()
        replica.start()
        with Redis(port=replica.port) as client:
            client.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: in_sync(replica), "the replica did not catch up")
        yield primary, replica
    finally:
        primary.close()
        replica.close()


def in_sync(server: RedisServer) -> bool:
    with Redis(port=server.port, decode_responses=True, socket_timeout=5) as client:
        info = client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


def wait_until(done: object, what: str) -> float:
    """Poll `done` (a callable) until it holds; return when (monotonic seconds) it was seen."""
    assert callable(done)
    deadline = time.monotonic() + SYNC_CEILING_SECONDS
    while not done():
        assert time.monotonic() < deadline, f"{what} within {SYNC_CEILING_SECONDS} s"
        time.sleep(POLL_SECONDS)
    return time.monotonic()


async def test_a_primary_demoted_behind_one_address_is_left_for_the_new_one_without_a_500(
    servers: tuple[RedisServer, RedisServer], key_files: dict[str, Path], tmp_path: Path
) -> None:
    primary, replica = servers
    forwarder = Forwarder(primary.port)
    await forwarder.start()
    settings = make_settings(
        f"redis://127.0.0.1:{forwarder.port}/0", key_files, users_file=tmp_path / "users.json"
    )
    readers = [f"reader-{number}" for number in range(READERS)]
    cyclers = [f"cycler-{number}" for number in range(CYCLERS)]
    for name in readers + cyclers:
        add_user(settings, name)
    try:
        async with running(create_app(settings)) as client:
            pairs = {name: await login(client, name) for name in readers}
            tokens = {name: pair["access_token"] for name, pair in pairs.items()}
            traffic = Traffic(client, tokens, cyclers)
            traffic.start()
            await asyncio.sleep(WARM_UP_SECONDS)

            # Everything acknowledged before now is on the replica too.
            checkpoint = time.monotonic()
            with Redis(port=primary.port) as direct:
                direct.set("checkpoint", "1", px=60_000)
                assert direct.wait(1, SYNC_CEILING_SECONDS * 1000) == 1
            # The failover, as a managed endpoint runs it.
            with Redis(port=replica.port) as direct:
                direct.replicaof("NO", "ONE")
            forwarder.retarget(replica.port)
            with Redis(port=primary.port) as direct:
                direct.replicaof("127.0.0.1", replica.port)
            demoted = time.monotonic()
            synced = await asyncio.to_thread(
                wait_until, lambda: in_sync(primary), "the old primary did not follow the new one"
            )
            await asyncio.sleep(STEADY_SECONDS)
            await traffic.stop()
            # Counted before the app closes its own connections at shutdown.
            dropped = forwarder.closed_by_client.get(primary.port, 0)

            survivors = await statuses_of_sessions(client, pairs.values())
    finally:
        await forwarder.close()

    answers = traffic.answers
    failed = [answer for answer in answers if answer.status == 503]
    lost = [answer for answer in answers if answer.status == 401]
    late = [answer for answer in failed if answer.asked >= synced]
    print(
        f"\n{len(answers)} answers; 503: {len(failed)} ({len(late)} asked after the old primary"
        f" caught up), lost writes (401): {len(lost)}; the old primary caught up"
        f" {synced - demoted:.2f} s after its demotion; connections the service closed on the old"
        f" primary: {dropped} of"
        f" {forwarder.opened.get(primary.port, 0)}, opened to the new one:"
        f" {forwarder.opened.get(replica.port, 0)}"
    )
    # No 500; each 503 with Retry-After; lost: only what the old primary acknowledged after the
    # checkpoint (README, "Past one Redis").
    assert_only_503s_and_late_writes_lost(answers, checkpoint)
    # Sessions opened before the checkpoint: alive, and their refresh tokens current.
    assert survivors == [(200, 200)] * len(pairs)
    # Once the old primary is a replica, a command that reaches it is answered READONLY, its
    # connection dropped, and the command sent again on a new connection, through the same
    # address, to the new primary: no request asked after that point fails.
    assert not late
    assert [a for a in answers if a.asked >= synced and a.status in (200, 204)]
    assert dropped >= 1
    assert forwarder.opened.get(replica.port, 0) >= 1
