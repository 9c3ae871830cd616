"""Each supported algorithm's generated project passes its own test suite against a real Redis.

The default bake runs exactly as its README says (`make install`, `make test`) and lets the suite
start its own throwaway redis-server; the RS256 bake is given `REDIS_URL` instead, so both ways
of finding Redis are exercised. A skipped test counts as a failure here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .baking import bake, clean_environment, install_into, load_generated_module, run

SUMMARY = re.compile(r"^=* ?(?P<counts>\d+ passed.*) in [\d.]+s", re.MULTILINE)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server this module starts, handed to one suite as REDIS_URL."""
    project = bake(tmp_path_factory.mktemp("redis-helper"))
    helper: Any = load_generated_module(project, "tests/redis_server.py", "generated_redis_server")
    server = helper.RedisServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/3"  # a database other than the default
    finally:
        server.close()


def assert_only_passes(output: str) -> str:
    match = SUMMARY.search(output)
    assert match is not None, output[-3000:]
    counts = match["counts"]
    assert re.fullmatch(r"\d+ passed", counts), f"not everything passed: {counts}\n{output[-3000:]}"
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_generated_suite_passes_with_a_throwaway_redis(
    tmp_path: Path, bake_venv: Path, algorithm: str
) -> None:
    project = bake(tmp_path, jwt_algorithm=algorithm)
    env = clean_environment()
    run(["make", "install", f"VENV={bake_venv}"], cwd=project, env=env)
    result = run(
        ["make", "test", f"VENV={bake_venv}", "ARGS=-p no:cacheprovider"], cwd=project, env=env
    )
    print(f"{algorithm}: {assert_only_passes(result.stdout)}")


@pytest.mark.slow
def test_generated_suite_passes_with_redis_url(
    tmp_path: Path, bake_venv: Path, shared_redis: str
) -> None:
    project = bake(tmp_path, jwt_algorithm="RS256")
    install_into(bake_venv, project)
    result = run(
        [bake_venv / "bin" / "python", "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=project,
        env=clean_environment(REDIS_URL=shared_redis),
    )
    print(f"RS256 with REDIS_URL: {assert_only_passes(result.stdout)}")


def test_without_any_redis_the_suite_stops_with_one_clear_message(
    tmp_path: Path, bake_venv: Path
) -> None:
    """No REDIS_URL and no redis-server on PATH: one message saying how to get a Redis."""
    project = bake(tmp_path)
    install_into(bake_venv, project)
    env = clean_environment(PATH=str(bake_venv / "bin"))  # python, but no redis-server
    result = subprocess.run(
        [
            str(bake_venv / "bin" / "python"),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/test_health.py",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 4, result.stdout[-2000:]
    assert result.stdout.count("These tests need a real Redis") == 1
    for advice in (
        "REDIS_URL",
        "apt-get install redis-server",
        "brew install redis",
        "docker compose up -d redis",
    ):
        assert advice in result.stdout
