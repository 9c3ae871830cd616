"""Redis Cluster (`APP_REDIS_CLUSTER=true`): every flow on a real three-master cluster.

The cluster is made of `redis-server` processes on loopback ports (see `redis_cluster.py`).
What is checked beyond "it works": a user's keys all hash to one slot (so each script runs on
one node), and the test users really are spread over more than one node.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from {{ cookiecutter.package_name }}.keyspace import LOGIN_TAG, Keyspace, hash_tag
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.redis_clients import ClusterClient, create_cluster_client
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.state import app_state

from .conftest import make_settings, running
from .helpers import PASSWORD, add_user, assert_invalid_token, bearer, login, me
from .otlp_collector import Collector
from .redis_cluster import RedisClusterServers
from .test_multiplex import state_after
from .test_processes import environment_for
from .test_tracing import OTEL_VARIABLES

pytestmark = pytest.mark.anyio

USERS = [f"cluster-user-{number}" for number in range(6)]
SESSIONS_PER_USER = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    try:
        servers = RedisClusterServers()
    except FileNotFoundError as missing:
        pytest.skip(f"Redis Cluster tests need {missing}")
    servers.start()  # stops what it started if the cluster does not form
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def inspector(cluster: RedisClusterServers) -> Iterator[dict[str, Redis]]:
    """A plain client per node (not a cluster client): each sees only the keys it holds."""
    clients = {
        f"127.0.0.1:{node.port}": Redis(port=node.port, decode_responses=True)
        for node in cluster.nodes
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-users") / "users.json"


@pytest.fixture
def cluster_settings(
    cluster: RedisClusterServers, key_files: dict[str, Path], users_file: Path
) -> Settings:
    """Settings for the cluster; the first use also writes the test users."""
    settings = cluster_settings_for(cluster, key_files, users_file)
    if not users_file.exists():
        for name in USERS:
            add_user(settings, name, scopes=["read"])
    return settings


def cluster_settings_for(
    cluster: RedisClusterServers, key_files: dict[str, Path], users_file: Path, **values: Any
) -> Settings:
    return make_settings(
        cluster.url, key_files, redis_cluster=True, users_file=users_file, **values
    )


def user_keys(inspector: dict[str, Redis], settings: Settings, name: str) -> dict[str, list[str]]:
    """The keys the service holds for `name`, by the node that actually stores them."""
    pattern = Keyspace(settings.redis_key_prefix).tagged(name)
    found = {node: sorted(client.scan_iter(match=pattern)) for node, client in inspector.items()}
    return {node: keys for node, keys in found.items() if keys}


def placement(inspector: dict[str, Redis], settings: Settings, name: str) -> tuple[str, int]:
    """(node, slot) of every key of `name`; fails unless all of them share one slot."""
    by_node = user_keys(inspector, settings, name)
    assert len(by_node) == 1, f"{name}'s keys are on several nodes: {by_node}"
    ((node, keys),) = by_node.items()
    server = inspector[node]
    slots = {int(server.cluster("KEYSLOT", key)) for key in keys}
    assert len(slots) == 1, f"{name}'s keys span slots {slots}: {keys}"
    assert slots == {key_slot(hash_tag(name).encode())}
    return node, slots.pop()


async def test_the_setting_selects_the_cluster_client(cluster_settings: Settings) -> None:
    app = create_app(cluster_settings)
    async with running(app) as client:
        assert isinstance(app_state(app).stores.redis, ClusterClient)
        assert (await client.get("/health/ready")).status_code == 200


async def test_login_me_refresh_reuse_and_logout(
    cluster_settings: Settings, inspector: dict[str, Redis]
) -> None:
    async with running(create_app(cluster_settings)) as client:
        name = USERS[0]
        first = await login(client, name)
        response = await me(client, first["access_token"])
        assert response.status_code == 200
        assert response.json() == {"sub": name, "scopes": ["read"]}

        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text
        second = refreshed.json()
        assert (await me(client, second["access_token"])).status_code == 200

        # Replaying the spent refresh token ends the session: both of its tokens die.
        replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert_invalid_token(replay)
        assert_invalid_token(await me(client, second["access_token"]))
        again = await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert_invalid_token(again)

        # Logout (a MULTI/EXEC pipeline on two keys of one slot) ends one session only.
        third, fourth = await login(client, name), await login(client, name)
        logout = await client.post("/auth/logout", headers=bearer(third["access_token"]))
        assert logout.status_code == 204
        assert_invalid_token(await me(client, third["access_token"]))
        assert (await me(client, fourth["access_token"])).status_code == 200
        refresh_after_logout = await client.post(
            "/auth/refresh", json={"refresh_token": third["refresh_token"]}
        )
        assert_invalid_token(refresh_after_logout)

    placement(inspector, cluster_settings, name)  # one node, one slot


async def test_logout_all_ends_every_session_of_users_spread_over_nodes(
    cluster: RedisClusterServers,
    key_files: dict[str, Path],
    users_file: Path,
    cluster_settings: Settings,
    inspector: dict[str, Redis],
) -> None:
    # A limit the test never reaches but whose buckets live long enough to be seen.
    settings = cluster_settings_for(cluster, key_files, users_file, rate_limit="1000/hour")
    async with running(create_app(settings)) as client:
        pairs = {
            name: [await login(client, name) for _ in range(SESSIONS_PER_USER)] for name in USERS
        }
        for name, sessions in pairs.items():
            for pair in sessions:
                response = await me(client, pair["access_token"])
                assert response.json()["sub"] == name

        placed: dict[str, tuple[str, int]] = {}
        for name in USERS:
            (keys,) = user_keys(inspector, settings, name).values()
            # One session hash per login, the session index and the rate-limit bucket.
            assert len(keys) == SESSIONS_PER_USER + 2, keys
            placed[name] = placement(inspector, settings, name)
        print("\nnodes:", ", ".join(inspector))
        for name, (node, slot) in placed.items():
            print(f"{name}: slot {slot} on {node}")
        nodes_used = {node for node, _ in placed.values()}
        assert len(nodes_used) > 1, f"every test user landed on one node: {placed}"

        # Logout-all for all users but the last: each one's sessions end, wherever they live.
        for name in USERS[:-1]:
            pair = pairs[name][0]
            response = await client.post("/auth/logout-all", headers=bearer(pair["access_token"]))
            assert response.status_code == 204
            for other in pairs[name]:
                assert_invalid_token(await me(client, other["access_token"]))
                refresh = await client.post(
                    "/auth/refresh", json={"refresh_token": other["refresh_token"]}
                )
                assert_invalid_token(refresh)
            left = [
                key
                for keys in user_keys(inspector, settings, name).values()
                for key in keys
                if ":sess" in key
            ]
            assert left == []
        # The last user was not logged out: every session of theirs still works.
        for pair in pairs[USERS[-1]]:
            assert (await me(client, pair["access_token"])).status_code == 200


async def test_authenticated_requests_are_rate_limited_on_the_cluster(
    cluster: RedisClusterServers,
    key_files: dict[str, Path],
    users_file: Path,
    cluster_settings: Settings,
) -> None:
    """The per-user bucket lives in the user's slot, beside the session: 5/minute, then 429."""
    settings = cluster_settings_for(cluster, key_files, users_file, rate_limit="5/minute")
    async with running(create_app(settings)) as client:
        token = (await login(client, USERS[1]))["access_token"]
        statuses = [(await me(client, token)).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        limited = await me(client, token)
        assert int(limited.headers["Retry-After"]) >= 1
        # Another user has a bucket of their own (on their own slot).
        other = (await login(client, USERS[2]))["access_token"]
        assert (await me(client, other)).status_code == 200


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(
    cluster: RedisClusterServers,
    key_files: dict[str, Path],
    users_file: Path,
    cluster_settings: Settings,
) -> None:
    """200 requests at once over 4 connections per node: each waits its turn, gets its own user.

    RedisCluster alone raises `MaxConnectionsError` (a 503) as soon as a node's pool is empty.
    """
    settings = cluster_settings_for(
        cluster, key_files, users_file, redis_max_connections=4, redis_timeout_seconds=5
    )
    async with running(create_app(settings)) as client:
        tokens = {name: (await login(client, name))["access_token"] for name in USERS}
        names = [USERS[number % len(USERS)] for number in range(200)]
        responses: list[httpx.Response] = await asyncio.gather(
            *(me(client, tokens[name]) for name in names)
        )
    for name, response in zip(names, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == name


async def test_login_gives_successes_back_and_limits_failures_on_the_cluster(
    cluster: RedisClusterServers,
    key_files: dict[str, Path],
    users_file: Path,
    cluster_settings: Settings,
    inspector: dict[str, Redis],
) -> None:
    """At 3/minute: five successes in a row, then exactly three failures and a 429 for the right
    password. Both login scripts touch two keys of the `{login}` slot; the refund deletes the
    bucket it empties (the successful account's) and leaves the others with a TTL."""
    settings = cluster_settings_for(cluster, key_files, users_file, login_rate_limit="3/minute")
    async with running(create_app(settings)) as client:
        for _ in range(5):
            await login(client, USERS[3])
        failures = []
        for _ in range(4):
            form = {"username": USERS[4], "password": "not the password"}
            failures.append((await client.post("/auth/token", data=form)).status_code)
        form = {"username": USERS[5], "password": PASSWORD}
        right_password = await client.post("/auth/token", data=form)
    assert failures == [401, 401, 401, 429]
    assert right_password.status_code == 429

    pattern = Keyspace(settings.redis_key_prefix).tagged(LOGIN_TAG)
    found = {node: list(server.scan_iter(match=pattern)) for node, server in inspector.items()}
    ((node, keys),) = [(node, keys) for node, keys in found.items() if keys]  # one node
    # The client's bucket and the failed account's; the successful account's is gone.
    assert len(keys) == 2, keys
    slots = {int(inspector[node].cluster("KEYSLOT", key)) for key in keys}
    assert slots == {key_slot(hash_tag(LOGIN_TAG).encode())}
    for key in keys:
        assert 0 < inspector[node].pttl(key) <= 60_000, key


async def test_items_and_disable_user_on_the_cluster(
    cluster: RedisClusterServers, key_files: dict[str, Path], cluster_settings: Settings
) -> None:
    """The example router's key and the script `disable-user` shares with logout-all each touch
    one slot; the command, run as an operator runs it, ends the sessions on the cluster."""
    settings, name = cluster_settings, "cluster-writer"
    add_user(settings, name, scopes=["read", "write"])
    environment = environment_for(settings, cluster.url, key_files)
    async with running(create_app(settings)) as client:
        pairs = [await login(client, name) for _ in range(2)]
        headers = bearer(pairs[0]["access_token"])
        added = await client.post("/items", json={"text": "on a cluster"}, headers=headers)
        assert added.status_code == 201
        listed = await client.get("/items", headers=headers)
        assert listed.json() == {"items": [{"text": "on a cluster"}]}

        result = await anyio.run_process(
            [sys.executable, "-m", "{{ cookiecutter.package_name }}", "disable-user", name],
            env={**environment, "APP_REDIS_CLUSTER": "true"},
            cwd=settings.users_file.parent,  # no .env there
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().endswith("; ended 2 session(s)\n")
        for pair in pairs:
            assert_invalid_token(await me(client, pair["access_token"]))


async def test_a_node_connection_keeps_nothing_of_the_request_that_opened_it(
    cluster_settings: Settings,
) -> None:
    """On a cluster every request's scripts go through the nodes' pooled connections: one
    opened by a request must not keep its context (see `test_multiplex.py`)."""
    client = create_cluster_client(cluster_settings)
    try:
        opened: list[tuple[Any, int]] = []

        async def request() -> None:  # the client's first: it discovers the nodes, too
            await client.initialize()
            node = client.get_default_node()
            opened.append((node, await client.client_id(target_nodes=node)))

        state = await state_after(request)
        assert state() is None, "the node's connection keeps the first request's context"
        ((node, connection_id),) = opened
        assert await client.client_id(target_nodes=node) == connection_id  # still open
    finally:
        await client.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_command_on_a_connection_closed_under_it_fails_as_a_connection_error(
    cluster_settings: Settings, loop: str
) -> None:
    """A pooled connection whose transport another task has closed, while redis-py still holds
    its writer, fails the next command with `ConnectionError` (a 503), on the event loop
    `serve` runs (uvloop) too.

    That is the state redis-py's cluster client leaves behind during a failover: it disconnects
    a node's idle connections, or every connection after `CLUSTERDOWN`, while other requests
    take them from the pool (see `failover.py`). Under uvloop the write used to raise
    `RuntimeError` ("unable to perform operation on <TCPTransport closed=True>"), a 500.
    """

    async def scenario() -> None:
        client = create_cluster_client(cluster_settings)
        try:
            key = f"{cluster_settings.redis_key_prefix}:{hash_tag(USERS[0])}:closed-under-it"
            await client.get(key)  # one connection to the key's node, now idle in its pool
            node = client.get_node_from_key(key)
            assert node is not None
            (connection,) = node._free  # the node's idle connections
            assert connection._writer is not None
            connection._writer.transport.abort()  # as redis-py's disconnect does
            await asyncio.sleep(0.05)  # the loop sees the transport closed
            with pytest.raises(RedisConnectionError):
                await client.get(key)
            assert await client.get(key) is None  # the next command dials again
        finally:
            await client.aclose()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())


async def test_redis_calls_on_the_cluster_are_traced_as_on_one_server(
    cluster_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The span wraps the script call, whichever client runs it: on the cluster client too
    (which OpenTelemetry's own Redis instrumentation leaves out), a login and a /me each show
    their calls under their request's span, with no key in any."""
    with Collector() as collector:
        for name in OTEL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        traced = cluster_settings.model_copy(update={"tracing": "otlp"})
        async with running(create_app(traced)) as client:
            pair = await login(client, USERS[0])
            assert (await me(client, pair["access_token"])).status_code == 200
        spans = collector.spans()
    under = {
        server.name: sorted(span.name for span in spans if span.parent_span_id == server.span_id)
        for server in spans
        if server.kind == "server"
    }
    assert under == {
        "POST /auth/token": ["limit.refund", "limit.take", "session.create"],
        "GET /me": ["session.admit"],
    }
    assert USERS[0].encode() not in collector.raw()
