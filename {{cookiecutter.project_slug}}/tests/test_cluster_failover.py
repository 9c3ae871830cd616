"""Redis Cluster failover under load: a primary dies (SIGKILL), its replica takes over, and the
old primary comes back as a replica, while a served process (`serve`) answers steady traffic.

The cluster: three primaries, one replica each, a short `cluster-node-timeout`, and
`cluster-require-full-coverage no`, as the README advises (with the default `yes`, every node
refuses every command from the moment one primary is declared failed until its replica takes
over, so every request would get 503 for that second).

The 500s this guards against came from a race (see `failover.py`) that this load does not hit
on every run; `test_cluster.py` sets up the state it leaves behind deterministically.

Why a served process rather than the app in-process: the reported 500s came from uvicorn's event
loop (uvloop), which raises on a write to a closed connection where asyncio's own transports
stay silent; the log to search for tracebacks is the process's own; and memory is the process's
RSS, with everything a failover makes and must let go of.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from {{ cookiecutter.package_name }} import outage
from {{ cookiecutter.package_name }}.keyspace import hash_tag
from {{ cookiecutter.package_name }}.limiter import LOGIN_POLICY

from .conftest import make_settings
from .helpers import add_user, bearer, login
from .redis_cluster import RedisClusterServers
from .test_processes import logged_service
from .test_reset_connections import rss_mib
from .traffic import (
    Answer,
    Traffic,
    assert_only_503s_and_late_writes_lost,
    served_limits,
    statuses_of_sessions,
)

pytestmark = pytest.mark.anyio

NODE_TIMEOUT_MS = 1000
NODE_TIMEOUT = NODE_TIMEOUT_MS / 1000
FAILOVER_CONFIG = [
    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
    "--cluster-require-full-coverage", "no",
]  # fmt: skip
# When the replica must have taken over, from the kill. Redis Cluster's failover, step by step:
# the primary is suspected after the node timeout and declared failed once most primaries agree
# (their reports travel with the gossip within about one more node timeout); the replica then
# waits 0.5 s plus up to 0.5 s at random (it is the only one, so rank 0 adds nothing) and asks
# for votes, for at most max(2 x node timeout, 2 s); a round without a majority is tried again
# after twice that. So: 2 node timeouts + 1 s + a lost round and its wait (3 rounds) + the round
# that wins, and all of it doubled for a loaded machine.
VOTE_ROUND = max(2 * NODE_TIMEOUT, 2.0)
PROMOTION_CEILING_SECONDS = 2 * (2 * NODE_TIMEOUT + 1.0 + 4 * VOTE_ROUND)
# From the moment every live node agrees on the new primary until no request fails. The service
# reads the new layout on the call after its first failed one, and the calls still going to the
# dead address fail at once (its port refuses), so this takes a few Redis round trips; the
# ceiling allows one more gossip round (a node timeout) and a second for a loaded machine.
CATCH_UP_SECONDS = NODE_TIMEOUT + 1.0
READERS_PER_PRIMARY = 4
CYCLERS_PER_PRIMARY = 2
WARM_UP_SECONDS = 3.0
STEADY_SECONDS = 4.0  # traffic after the recovery, and again after the old primary is back
# RSS may settle a little higher after a failover (allocator arenas, reconnected pools, redis-py
# building its node tables again), by a constant. A leak per failed request (an exception and
# its traceback kept, say) would pass it: a few hundred 503s keep tens of KiB each.
MAX_RSS_GROWTH_MIB = 8
# The outage's end is logged after a window without failures: within two windows of its start.
OUTAGE_END_CEILING_SECONDS = 3 * outage.WINDOW_SECONDS


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    try:
        servers = RedisClusterServers(replicas=1, config=FAILOVER_CONFIG)
    except FileNotFoundError as missing:
        pytest.skip(f"Redis Cluster tests need {missing}")
    servers.start()
    try:
        yield servers
    finally:
        servers.close()


@dataclass
class Timeline:
    """Monotonic times of the scenario; `unpromoted`: no replica had taken over before it."""

    checkpoint: float = 0.0
    killed: float = 0.0
    unpromoted: float = 0.0
    promoted: float = 0.0
    agreed: float = 0.0
    back: float = 0.0
    ended: float = 0.0


async def test_a_primary_killed_under_load_costs_503s_on_its_slots_only_and_no_replicated_write(
    cluster: RedisClusterServers, key_files: dict[str, Path], tmp_path: Path
) -> None:
    settings = make_settings(cluster.url, key_files, users_file=tmp_path / "users.json")
    users = cluster.users_by_primary(READERS_PER_PRIMARY + CYCLERS_PER_PRIMARY, "failover-")
    for name in [name for names in users.values() for name in names]:
        add_user(settings, name)
    # Not the primary of the login buckets' slot: every login needs that one (see the README).
    login_primary = cluster.primary_port(key_slot(LOGIN_POLICY.encode()))
    doomed = next(port for port in users if port != login_primary)
    replica = cluster.replica_port(doomed)
    doomed_users = set(users[doomed])
    doomed_slots = {key_slot(name.encode()) for name in doomed_users}
    readers = [name for names in users.values() for name in names[:READERS_PER_PRIMARY]]
    cyclers = [name for names in users.values() for name in names[READERS_PER_PRIMARY:]]
    times = Timeline()

    served = logged_service(settings, cluster.url, key_files, tmp_path, APP_REDIS_CLUSTER="true")
    with served as (service, log):
        limits = served_limits(len(readers) + len(cyclers) + 4)
        async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=30) as client:
            pairs = {name: await login(client, name) for name in readers}
            tokens = {name: pair["access_token"] for name, pair in pairs.items()}
            traffic = Traffic(client, tokens, cyclers)
            traffic.start()
            await asyncio.sleep(WARM_UP_SECONDS)
            rss_warm = rss_mib(service.process.pid)

            tagged_key = f"{settings.redis_key_prefix}:{hash_tag(users[doomed][0])}:checkpoint"
            times.checkpoint = await asyncio.to_thread(cluster.checkpoint, doomed, tagged_key)
            await asyncio.to_thread(cluster.server(doomed).kill)
            times.killed = time.monotonic()
            times.unpromoted, times.promoted = await asyncio.to_thread(
                cluster.wait_for_promotion, replica, times.killed, PROMOTION_CEILING_SECONDS
            )
            times.agreed = await asyncio.to_thread(
                cluster.wait_until,
                lambda: all(cluster.all_see_primary(slot, replica) for slot in doomed_slots),
                "the nodes did not agree on the new primary",
                PROMOTION_CEILING_SECONDS,
            )
            await asyncio.sleep(CATCH_UP_SECONDS + STEADY_SECONDS)
            rss_failed_over = rss_mib(service.process.pid)

            await asyncio.to_thread(cluster.server(doomed).start)  # the same node, empty
            times.back = time.monotonic()
            await asyncio.to_thread(
                cluster.wait_until,
                lambda: cluster.replica_in_sync(doomed),
                "the old primary did not come back as a replica",
                PROMOTION_CEILING_SECONDS,
            )
            await asyncio.sleep(STEADY_SECONDS)
            rss_rejoined = rss_mib(service.process.pid)
            await traffic.stop()
            times.ended = time.monotonic()

            survivors = await statuses_of_sessions(client, pairs.values())
            # Logouts acknowledged before the checkpoint: still logged out.
            undone = []
            for logout in traffic.logouts:
                if logout.acknowledged < times.checkpoint:
                    seen = await client.get("/me", headers=bearer(logout.access_token))
                    if seen.status_code != 401:
                        undone.append(logout)
        await wait_for_line(log, "Redis answers again", OUTAGE_END_CEILING_SECONDS)
    text = log.read_text()
    answers = traffic.answers
    failed = [answer for answer in answers if answer.status == 503]
    print(describe(answers, times, undone))
    print(
        f"RSS: {rss_warm:.1f} MiB warm, {rss_failed_over:.1f} after the failover,"
        f" {rss_rejoined:.1f} after the rejoin"
    )

    # No 500, no reset; each 503 with Retry-After; lost: only writes acknowledged after the
    # checkpoint (the README says which ones).
    assert_only_503s_and_late_writes_lost(answers, times.checkpoint)
    assert "Traceback" not in text
    # Sessions opened before the checkpoint: alive, and their refresh tokens current.
    assert survivors == [(200, 200)] * len(pairs)
    # Other primaries' users: served throughout.
    assert {a.status for a in answers if a.user not in doomed_users} <= {200, 204}
    # The dead primary's users: while their slot had no primary, every answer was a 503; and no
    # request asked once the catch-up was over failed.
    during = [
        a
        for a in answers
        if a.user in doomed_users and a.asked >= times.killed and a.answered <= times.unpromoted
    ]
    assert during
    assert {a.status for a in during} == {503}
    assert not [a for a in failed if a.asked > times.agreed + CATCH_UP_SECONDS]
    assert not undone
    # The old primary's return: nothing for clients to see.
    assert {a.status for a in answers if a.asked >= times.back} <= {200, 204}
    assert rss_failed_over - rss_warm <= MAX_RSS_GROWTH_MIB
    assert rss_rejoined - rss_failed_over <= MAX_RSS_GROWTH_MIB
    # A few lines for the outage: its start, a summary per window, its end.
    started, summaries, ended = (text.count(line) for line in OUTAGE_LINES)
    outage_seconds = max(a.answered for a in failed) - min(a.answered for a in failed)
    assert (started, ended) == (1, 1)
    assert summaries <= 1 + outage_seconds // outage.WINDOW_SECONDS


OUTAGE_LINES = ("): outage started", "Redis still unavailable", "Redis answers again")


async def wait_for_line(log: Path, text: str, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while text not in await asyncio.to_thread(log.read_text):
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout_seconds} s"
        await asyncio.sleep(0.2)


def describe(answers: list[Answer], times: Timeline, undone: Sequence[object]) -> str:
    failed = [a for a in answers if a.status == 503]
    last_failure = max((a.answered for a in failed), default=times.killed) - times.killed
    return (
        f"\n{len(answers)} answers; 503: {len(failed)}, 500: "
        f"{sum(a.status == 500 for a in answers)}, no answer: "
        f"{sum(a.status == 0 for a in answers)}, lost writes (401): "
        f"{sum(a.status == 401 for a in answers)}, logouts undone: {len(undone)}; after the kill: "
        f"promoted at {times.promoted - times.killed:.2f} s, all nodes agreed at "
        f"{times.agreed - times.killed:.2f} s, last 503 at {last_failure:.2f} s; old primary "
        f"back at {times.back - times.killed:.2f} s"
    )
