"""Fixtures shared by the template's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .baking import BAKE_VENV, HOST_PYTHON, bake, clean_environment, run

# Lines for the end of the run's output: pytest shows a passing test's prints only with -s.
REPORTED = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Say a line at the end of the run: which Compose ran each Docker scenario, on which base
    images, and what it took."""
    return request.config.stash.setdefault(REPORTED, []).append


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(REPORTED, [])
    if lines:
        terminalreporter.section("what the Docker scenarios ran")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def bake_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the generated project's runtime and dev dependencies, on this Python.

    It is made with the generated Makefile's own `install` target (exactly the lock, as a user
    would), from a bake for this Python; other bakes are made importable in it with
    `install_into` before they run there.
    """
    project = bake(tmp_path_factory.mktemp("venv-bake"), python_version=HOST_PYTHON)
    run(["make", "install", f"VENV={BAKE_VENV}"], cwd=project, env=clean_environment())
    return BAKE_VENV
