"""Several `python -m {{ cookiecutter.package_name }} serve` processes on one Redis, and SIGTERM.

Nothing about a session lives in a process: logout, refresh-token reuse and the rate limit are
all decided in Redis, so what one process does, every other sees on its next request.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

import {{ cookiecutter.package_name }}
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import CHEAP_ARGON2, delete_keys, make_settings
from .helpers import PASSWORD, add_user, assert_invalid_token
from .redis_server import RedisServer, free_port
from .test_cli import service_environment, wait_for

# Per hour, for the shared-limit test; other tests stay far below it. Per hour, not per minute:
# at 20/minute a request comes back every 3 s, and on a loaded machine the test's 21 requests
# can take longer than that, so the 21st was sometimes let through.
SHARED_RATE = 20
STOP_SECONDS = 5  # SIGTERM to exit, in-flight requests included
GRACE_STARTED = "Waiting for connections to close."  # uvicorn's line
HOLD_AFTER_SIGTERM_SECONDS = 0.5  # a small part of the 10 s grace period
IN_FLIGHT = 24


@dataclass
class Service:
    process: subprocess.Popen[str]
    url: str
    own_group: bool = False  # started in a session of its own (start_service)

    def kill(self) -> None:
        """SIGKILL to `serve`, and when it leads its own process group, to every process it
        started (its workers): a worker left behind would hold the output pipe open, and
        reading that to the end would never return."""
        if self.own_group:
            with suppress(ProcessLookupError):  # every member has exited already
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def get(self, path: str, token: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=bearer(token), timeout=10)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kwargs)

    def login(self, name: str) -> dict[str, Any]:
        response = self.post("/auth/token", data={"username": name, "password": PASSWORD})
        assert response.status_code == 200, response.text
        pair: dict[str, Any] = response.json()
        return pair


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_service(
    environment: dict[str, str],
    cwd: Path,
    *options: str,
    output: IO[str] | None = None,
    port: int | None = None,
) -> Service:
    """`serve` on `port` (else a free one), with `options` (e.g. "--workers", "2"). Its output
    goes to `output`, or to a pipe read at the end: a test making many requests must pass a
    file, or the access log fills the pipe and the service stops."""
    port = port or free_port()
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, *options],
        env=environment,
        cwd=cwd,
        stdout=subprocess.PIPE if output is None else output,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, for `Service.kill`
    )
    return Service(process, f"http://127.0.0.1:{port}", own_group=True)


def wait_until_ready(service: Service) -> None:
    try:
        response = wait_for(f"{service.url}/health/ready", service.process)
    except AssertionError:
        service.kill()
        output, _ = service.process.communicate()  # read to the end, and closed
        raise AssertionError(f"the service did not start:\n{output or ''}") from None
    assert response.status_code == 200, response.text


def kill(service: Service) -> None:
    service.kill()
    service.process.communicate()


@contextmanager
def logged_service(
    settings: Settings, redis_url: str, key_files: dict[str, Path], folder: Path, **extra: str
) -> Iterator[tuple[Service, Path]]:
    """A ready `serve` process for `settings` (and `extra` environment variables), writing its
    output to a file."""
    log = folder / "service.log"
    with log.open("w") as output:
        environment = {**environment_for(settings, redis_url, key_files), **extra}
        service = start_service(environment, folder, output=output)
    try:
        wait_until_ready(service)
        yield service, log
    finally:
        kill(service)


def stop(service: Service, log: Path) -> str:
    """Stop the process (so every line it wrote is in the file), then read its output."""
    service.process.send_signal(signal.SIGTERM)
    service.process.wait(timeout=STOP_SECONDS)
    return log.read_text()


def environment_for(
    settings: Settings, redis_url: str, key_files: dict[str, Path]
) -> dict[str, str]:
    """What `serve` needs to agree with `settings`: Redis, key prefix, users, limits, hashing,
    and the very code under test (it may be importable only through a relative PYTHONPATH)."""
    source = Path({{ cookiecutter.package_name }}.__file__).resolve().parents[1]
    python_path = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    return service_environment(
        redis_url,
        key_files,
        PYTHONPATH=python_path,
        APP_REDIS_KEY_PREFIX=settings.redis_key_prefix,
        APP_USERS_FILE=str(settings.users_file),
        APP_CLIENTS_FILE=str(settings.clients_file),
        APP_RATE_LIMIT=str(settings.rate_limit),
        APP_LOGIN_RATE_LIMIT=str(settings.login_rate_limit),
        APP_REDIS_TIMEOUT_SECONDS=str(settings.redis_timeout_seconds),
        **{f"APP_{name.upper()}": str(value) for name, value in CHEAP_ARGON2.items()},
    )


@pytest.fixture(scope="module")
def shared(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Service, Service]]:
    """Two service processes, A and B, on the session's Redis with one key prefix and users."""
    folder = tmp_path_factory.mktemp("processes")
    settings = make_settings(
        redis_url,
        key_files,
        users_file=folder / "users.json",
        rate_limit=f"{SHARED_RATE}/hour",
        login_rate_limit="1000/minute",
    )
    environment = environment_for(settings, redis_url, key_files)
    services = [start_service(environment, folder) for _ in range(2)]
    try:
        for service in services:
            wait_until_ready(service)
        yield settings, services[0], services[1]
    finally:
        for service in services:
            kill(service)
        delete_keys(redis_url, settings.redis_key_prefix)


def new_user(settings: Settings) -> str:
    name = f"user-{secrets.token_hex(4)}"
    add_user(settings, name, scopes=["read"])
    return name


def test_logout_on_one_process_is_seen_by_the_other_at_once(
    shared: tuple[Settings, Service, Service],
) -> None:
    settings, a, b = shared
    name = new_user(settings)
    pair = a.login(name)
    token = pair["access_token"]
    assert a.get("/me", token).json()["sub"] == name
    assert b.get("/me", token).json()["sub"] == name

    assert b.post("/auth/logout", headers=bearer(token)).status_code == 204
    assert_invalid_token(a.get("/me", token))  # the very next request, on the other process
    assert_invalid_token(a.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]}))


def test_logout_all_on_one_process_ends_sessions_opened_on_the_other(
    shared: tuple[Settings, Service, Service],
) -> None:
    settings, a, b = shared
    name = new_user(settings)
    on_a, on_b = a.login(name), b.login(name)
    assert a.post("/auth/logout-all", headers=bearer(on_a["access_token"])).status_code == 204
    for service in (a, b):
        assert_invalid_token(service.get("/me", on_b["access_token"]))


def test_refresh_token_reuse_is_detected_across_processes(
    shared: tuple[Settings, Service, Service],
) -> None:
    settings, a, b = shared
    name = new_user(settings)
    first = a.login(name)
    rotated = a.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert a.get("/me", second["access_token"]).status_code == 200

    # The spent token replayed on B: refused, and the session is over everywhere.
    assert_invalid_token(b.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}))
    assert_invalid_token(a.get("/me", second["access_token"]))
    assert_invalid_token(a.post("/auth/refresh", json={"refresh_token": second["refresh_token"]}))


def test_the_rate_limit_is_shared_by_the_processes(
    shared: tuple[Settings, Service, Service],
) -> None:
    settings, a, b = shared
    token = a.login(new_user(settings))["access_token"]
    statuses = [
        (a if number % 2 else b).get("/me", token).status_code for number in range(SHARED_RATE)
    ]
    assert statuses == [200] * SHARED_RATE
    for service in (a, b):
        refused = service.get("/me", token)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    server.start()
    try:
        yield server
    finally:
        server.close()


def unread_by_redis(redis_port: int) -> int:
    """Bytes sent to the Redis on `redis_port` that it has not read yet, over all its
    established connections (Linux's /proc/net/tcp: local port, state 01, rx_queue)."""
    unread = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == redis_port and fields[3] == "01":
                unread += int(fields[4].split(":")[1], 16)
    return unread


def poll(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait until `condition()` holds; the timeout is a guard against hanging, not a budget."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(
    private_redis: RedisServer, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Requests are held in flight by a frozen Redis; SIGTERM arrives; Redis thaws: every one
    of them gets its full answer, the pool closes, and the process exits 0 without a traceback.

    Nothing here is timed. With Redis paused, every /me sends one command of the same size
    (same-length names, one script): the test measures it on the first request, then waits
    until Redis holds exactly `IN_FLIGHT` of them unread, sends SIGTERM, and waits until the
    service has logged that its grace period began before Redis thaws (after a short hold).
    """
    settings = make_settings(
        private_redis.url,
        key_files,
        users_file=tmp_path / "users.json",
        redis_timeout_seconds=STOP_SECONDS * 6,  # longer than any wait below
        rate_limit="1000/minute",
        login_rate_limit="1000/minute",
    )
    log = tmp_path / "service.log"
    with log.open("w") as output:
        environment = environment_for(settings, private_redis.url, key_files)
        service = start_service(environment, tmp_path, output=output)
    try:
        wait_until_ready(service)
        names = [new_user(settings) for _ in range(4)]
        tokens = {name: service.login(name)["access_token"] for name in names}
        callers = [names[number % len(names)] for number in range(IN_FLIGHT)]

        # One client for all threads: a client per request would spend most of the wait below
        # building TLS contexts.
        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=0)
        http = httpx.Client(base_url=service.url, limits=limits, timeout=60)

        def get_me(name: str) -> httpx.Response:
            return http.get("/me", headers=bearer(tokens[name]))

        private_redis.pause()
        with http, ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            try:
                futures = [pool.submit(get_me, callers[0])]
                poll(lambda: unread_by_redis(private_redis.port) > 0, "a command sent to Redis")
                command_bytes = unread_by_redis(private_redis.port)
                futures += [pool.submit(get_me, name) for name in callers[1:]]
                poll(
                    lambda: unread_by_redis(private_redis.port) == IN_FLIGHT * command_bytes,
                    f"all {IN_FLIGHT} commands of {command_bytes} bytes waiting in Redis",
                )
                assert not any(future.done() for future in futures)
                service.process.send_signal(signal.SIGTERM)
                # uvicorn logs this once its grace period (GRACEFUL_SHUTDOWN_SECONDS) has begun;
                # Redis stays frozen a while longer, far less than that period, and the
                # requests must still be waiting, not cancelled.
                poll(lambda: GRACE_STARTED in log.read_text(), "the grace period starting")
                time.sleep(HOLD_AFTER_SIGTERM_SECONDS)
                assert not any(future.done() for future in futures)
            finally:
                private_redis.resume()
            responses = [future.result() for future in futures]

        # A process that does not stop in time makes this raise: the stop is bounded.
        service.process.wait(timeout=STOP_SECONDS)
    finally:
        kill(service)

    output_text = log.read_text()
    for name, response in zip(callers, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json() == {"sub": name, "scopes": ["read"]}
    assert service.process.returncode == 0, output_text
    assert "Traceback" not in output_text
    assert "Application shutdown complete" in output_text  # the lifespan closed the Redis pool


# --- workers slow to start -----------------------------------------------------------------

SLOW_START_SECONDS = 7  # longer than uvicorn's own 5 s worker healthcheck, shorter than ours
READY_WITHIN_SECONDS = 60  # a ceiling for the wait, not a measure of anything


def test_workers_slower_to_start_than_uvicorns_own_healthcheck_are_kept(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """`serve --workers 2` whose workers each take 7 s before they can answer the parent's
    healthcheck (a CPU-starved container): they are kept and serve; none is replaced. With
    uvicorn's 5 s the parent replaces each one before it answers, for ever."""
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if '--multiprocessing-fork' in sys.argv:  # a worker uvicorn spawned\n"
        f"    time.sleep({SLOW_START_SECONDS})\n"
    )
    environment = service_environment(redis_url, key_files)
    python_path = [str(slow), str(Path({{ cookiecutter.package_name }}.__file__).parents[1])]
    environment["PYTHONPATH"] = os.pathsep.join(python_path)
    service = start_service(environment, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + READY_WITHIN_SECONDS
        while True:
            assert service.process.poll() is None, "serve exited"
            with suppress(httpx.TransportError):
                if httpx.get(f"{service.url}/health/ready", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"no worker ready in {READY_WITHIN_SECONDS} s"
            time.sleep(0.5)
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=READY_WITHIN_SECONDS)
    finally:
        service.kill()
    output, _ = service.process.communicate()
    assert service.process.returncode == 0, output
    assert "died" not in output, output


# Long enough that nothing below depends on the machine's speed; a second SIGTERM ends it.
LONG_DRAIN_SECONDS = 300
SHORT_DRAIN_SECONDS = 1
DRAIN_STARTED = "SIGTERM: draining for"  # shutdown.py's line, once per serving process


def test_sigterm_drains_readiness_503_while_requests_are_still_served(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """SIGTERM: readiness answers 503 at once, while /me and liveness are still answered, each
    answer with `Connection: close` (a proxy keeps no idle connection to a process about to
    stop). A second SIGTERM ends the drain at once: exit 0, long before it would have ended."""
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", rate_limit="1000/minute"
    )
    drain = {"APP_SHUTDOWN_DRAIN_SECONDS": str(LONG_DRAIN_SECONDS)}
    with logged_service(settings, redis_url, key_files, tmp_path, **drain) as (service, log):
        token = service.login(new_user(settings))["access_token"]
        with httpx.Client(base_url=service.url, timeout=10) as http:
            before = http.get("/me", headers=bearer(token))
            assert before.status_code == 200
            assert before.headers.get("connection") != "close"  # kept alive until the drain
            service.process.send_signal(signal.SIGTERM)
            poll(lambda: http.get("/health/ready").status_code == 503, "readiness turning 503")
            during = [http.get("/me", headers=bearer(token)) for _ in range(5)]
            live = http.get("/health/live")
        assert [response.status_code for response in during] == [200] * 5
        assert [response.headers["connection"] for response in during] == ["close"] * 5
        assert live.status_code == 200
        assert service.process.poll() is None  # still serving, still draining
        assert log.read_text().count(DRAIN_STARTED) == 1

        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=STOP_SECONDS * 6)  # far less than the drain
        output = log.read_text()
    assert service.process.returncode == 0, output
    assert "Traceback" not in output
    assert "Application shutdown complete" in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_by_itself_once_the_drain_is_over(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, workers: str
) -> None:
    """After the drain, uvicorn's graceful shutdown runs and the process exits 0 by itself, no
    sooner than the drain's length after SIGTERM; with workers, each of them drains."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    log = tmp_path / "service.log"
    with log.open("w") as output:
        environment = {
            **environment_for(settings, redis_url, key_files),
            "APP_SHUTDOWN_DRAIN_SECONDS": str(SHORT_DRAIN_SECONDS),
        }
        service = start_service(environment, tmp_path, "--workers", workers, output=output)
    try:
        wait_until_ready(service)
        if workers != "1":  # every worker has started (each logs its startup)
            poll(
                lambda: log.read_text().count("Application startup complete") == int(workers),
                "every worker started",
            )
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        service.process.wait(timeout=SHORT_DRAIN_SECONDS + STOP_SECONDS * 6)
        stopped_after = time.monotonic() - signalled
    finally:
        kill(service)
    text = log.read_text()
    assert service.process.returncode == 0, text
    assert stopped_after >= SHORT_DRAIN_SECONDS
    assert text.count(DRAIN_STARTED) == int(workers), text
    assert text.count("Application shutdown complete") == int(workers), text
    assert "Traceback" not in text
