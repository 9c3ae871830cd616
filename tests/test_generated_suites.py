"""Each supported algorithm's generated project passes its own test suite against a real Redis.

The default bake runs exactly as its README says (`make install`, `make test`) and lets the suite
start its own throwaway redis-server, as does the ES256 bake; the RS256 bake is given `REDIS_URL`
instead, so both ways of finding Redis are exercised. The three run side by side. A skipped
test counts as a failure here.

The default project is made as a team keeps one current: `cruft create`, then a later template
brought in with `cruft update` (tests/test_update.py checks the update itself), so the suite that
passes is an updated project's.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .baking import (
    bake,
    bake_updated_with_cruft,
    clean_environment,
    install_into,
    load_generated_module,
)

SUMMARY = re.compile(r"^=* ?(?P<counts>\d+ passed.*) in [\d.]+s", re.MULTILINE)
SUITE_TIMEOUT_SECONDS = 1200


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


@dataclass
class Suite:
    """A generated project's suite, running in the background; its output goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path

    def counts(self) -> str:
        """Wait for the suite; fail with its output unless it ran and everything passed."""
        try:
            self.process.wait(timeout=SUITE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        text = self.output.read_text(errors="replace")
        if self.process.returncode != 0:
            pytest.fail(f"{self.name} exited {self.process.returncode}:\n{text[-6000:]}")
        return assert_only_passes(text)


def start_suite(name: str, command: str, project: Path, **env: str) -> Suite:
    output = project.parent / f"{project.name}-suite.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=project,
            env=clean_environment(PYTHONPATH=str(project / "src"), **env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Suite(name, process, output)


@pytest.fixture(scope="module")
def suites(
    tmp_path_factory: pytest.TempPathFactory, bake_venv: Path, shared_redis: str
) -> Iterator[dict[str, Suite]]:
    """The three bakes' suites, started together: each takes minutes, mostly waiting (served
    processes, Redis outages, key fetches), so side by side they finish in about the time of
    the longest instead of the sum.

    They share the bake virtualenv, which holds every dependency; each imports its own bake
    through `PYTHONPATH` (ahead of whichever bake is installed in editable mode there).
    """
    venv = f"VENV={bake_venv}"
    make_args = "ARGS='-p no:cacheprovider'"
    python = bake_venv / "bin" / "python"
    projects = {
        algorithm: bake(tmp_path_factory.mktemp(f"suite-{algorithm}"), jwt_algorithm=algorithm)
        for algorithm in ("ES256", "RS256")
    }
    projects["HS256"] = bake_updated_with_cruft(tmp_path_factory.mktemp("suite-HS256"))
    running = {
        # Exactly as the README says (`make install`, `make test`), with a throwaway redis-server.
        "HS256": start_suite(
            "HS256", f"make install {venv} && make test {venv} {make_args}", projects["HS256"]
        ),
        "ES256": start_suite("ES256", f"make test {venv} {make_args}", projects["ES256"]),
        # Told where Redis is, in a database other than the default.
        "RS256": start_suite(
            "RS256 with REDIS_URL",
            f"{python} -m pytest -p no:cacheprovider",
            projects["RS256"],
            REDIS_URL=shared_redis,
        ),
    }
    try:
        yield running
    finally:
        for suite in running.values():
            if suite.process.poll() is None:
                suite.process.kill()
                suite.process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["HS256", "ES256", "RS256"])
def test_generated_suite_passes(suites: dict[str, Suite], algorithm: str) -> None:
    suite = suites[algorithm]
    print(f"{suite.name}: {suite.counts()}")


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
