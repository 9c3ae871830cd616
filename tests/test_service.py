"""The container's own command, with the container's own environment, against a real Redis.

No Docker engine runs here, so this runs what the image would run: the Dockerfile's CMD, with
the app environment that `docker-compose config` resolves (`.env` plus compose's overrides),
against a password-protected redis-server standing in for compose's `redis` service.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .baking import HOST_PYTHON, bake, clean_environment, install_into, load_generated_module
from .test_deploy_files import compose_config, dockerfile_instructions

NO_HANG_SECONDS = 2.0  # what is asserted is "answers promptly", not speed


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, bake_venv: Path) -> Path:
    project = bake(
        tmp_path_factory.mktemp("service"), jwt_algorithm="ES256", python_version=HOST_PYTHON
    )
    install_into(bake_venv, project)
    return project


@pytest.fixture
def redis(project: Path) -> Iterator[Any]:
    """compose's `redis` service: redis-server with the password from the bake's `.env`."""
    helper: Any = load_generated_module(project, "tests/redis_server.py", "generated_redis_server")
    password = compose_config(project)["services"]["redis"]["command"][2]
    server = helper.RedisServer(password=password)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def service(
    project: Path, redis: Any, bake_venv: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start the image's CMD in a working directory laid out like the container's /app."""
    app_config = compose_config(project)["services"]["app"]
    environment = {name: str(value) for name, value in app_config["environment"].items()}
    port = load_generated_module(
        project, "tests/redis_server.py", "generated_redis_server"
    ).free_port()
    environment["APP_REDIS_URL"] = environment["APP_REDIS_URL"].replace(
        "@redis:6379", f"@127.0.0.1:{redis.port}"
    )
    environment["APP_PORT"] = str(port)  # the only change: a free port instead of 8000
    environment["APP_USERS_FILE"] = str(tmp_path / "data" / "users.json")  # the named volume
    (tmp_path / "data").mkdir()
    workdir = tmp_path / "app"
    shutil.copytree(project / "keys", workdir / "keys")  # compose mounts ./keys at /app/keys

    command = json.loads(
        next(rest for name, rest in reversed(dockerfile_instructions(project)) if name == "CMD")
    )
    assert command[0] == "python"
    process = subprocess.Popen(
        [str(bake_venv / "bin" / "python"), *command[1:]],
        cwd=workdir,
        env=clean_environment(**environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                httpx.get(f"{base_url}/health/live", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def timed_get(url: str) -> tuple[int, float, str | None]:
    started = time.monotonic()
    response = httpx.get(url, timeout=10)
    return response.status_code, time.monotonic() - started, response.headers.get("Retry-After")


def test_container_command_serves_and_reports_redis_trouble_promptly(
    service: tuple[subprocess.Popen[str], str], redis: Any
) -> None:
    """Live is 200 throughout; ready is 200, then 503 within about the Redis timeout when Redis
    freezes or stops, then 200 again once it is back; SIGTERM stops the service with status 0."""
    process, base_url = service
    ready = f"{base_url}/health/ready"
    assert timed_get(f"{base_url}/health/live")[0] == 200
    assert timed_get(ready)[0] == 200

    redis.pause()
    frozen = timed_get(ready)
    assert timed_get(f"{base_url}/health/live")[0] == 200
    redis.resume()
    after_freeze = timed_get(ready)

    redis.stop()
    stopped = timed_get(ready)
    redis.start()
    after_restart = timed_get(ready)

    print(f"\nready (status, seconds, Retry-After): frozen {frozen}, back {after_freeze}")
    print(f"ready (status, seconds, Retry-After): stopped {stopped}, restarted {after_restart}")
    assert frozen[0] == 503
    assert frozen[2] == "1"
    assert frozen[1] < NO_HANG_SECONDS
    assert after_freeze[0] == 200
    assert stopped[0] == 503
    assert stopped[1] < NO_HANG_SECONDS
    assert after_restart[0] == 200

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert "Traceback" not in output
