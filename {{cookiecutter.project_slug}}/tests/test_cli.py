"""The command line, run as a user runs it: `python -m {{ cookiecutter.package_name }} ...`."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.cli.serve import served_app
from {{ cookiecutter.package_name }}.settings import get_settings

from .redis_server import free_port

# A ceiling, not a measure: a process that fails to start exits and is reported at once, but
# `serve --workers 2` on a machine running five suites side by side took over 20 s to start.
START_TIMEOUT_SECONDS = 60


def service_environment(redis_url: str, key_files: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("APP_")}
    env.update(
        APP_REDIS_URL=redis_url,
        APP_JWT_SECRET="a-test-secret-of-more-than-thirty-two-bytes-0123456789",
        APP_JWT_PRIVATE_KEY_FILE=str(key_files["private"]),
        APP_JWT_PUBLIC_KEY_FILE=str(key_files["public"]),
        # SIGTERM stops at once: these tests are about other things, and test_processes.py
        # tests the drain (APP_SHUTDOWN_DRAIN_SECONDS) on its own.
        APP_SHUTDOWN_DRAIN_SECONDS="0",
    )
    env.update(extra)
    return env


def serve_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`serve` on a free port, for settings that must stop it before it binds: its exit and
    output (a bounded wait, in case it starts after all)."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--port", str(free_port())],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for(url: str, process: subprocess.Popen[str]) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited early with {process.returncode}")
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


@pytest.fixture
def service(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "serve", "--port", str(port)],
        env=service_environment(redis_url, key_files),
        cwd=tmp_path,  # no .env there: configuration comes from the environment only
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()  # reap it and close its output pipe


def test_serve_answers_and_stops_cleanly_on_sigterm(
    service: tuple[subprocess.Popen[str], str],
) -> None:
    """`serve` answers the probes, and SIGTERM ends it with status 0 and no traceback."""
    process, base_url = service
    assert wait_for(f"{base_url}/health/live", process).status_code == 200
    assert httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert "Traceback" not in output


def test_serve_refuses_bad_settings_with_one_line_per_problem(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """A malformed setting stops `serve` before it binds, naming the variable."""
    result = serve_once(service_environment(redis_url, key_files, APP_RATE_LIMIT="often"), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: APP_RATE_LIMIT: 'often' is not a rate; use N/second, N/minute or N/hour "
        "(e.g. 100/minute)"
    ]


def test_served_app_freezes_what_startup_built(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` runs `served_app`: afterwards the garbage collector leaves the startup objects
    alone (they outnumber everything it still tracks many times over), so full collections
    stay short."""
    for name, value in service_environment(redis_url, key_files).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env here
    get_settings.cache_clear()
    try:
        app = served_app()
        frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
    finally:
        gc.unfreeze()
        get_settings.cache_clear()
    assert isinstance(app, FastAPI)
    assert frozen > 10 * tracked, (frozen, tracked)
