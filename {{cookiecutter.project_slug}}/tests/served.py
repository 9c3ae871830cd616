"""A `serve` process of its own for a test or a test module: test settings, ready before the test
starts, its output in a file, and every Redis key it wrote removed afterwards.

conftest.py registers the `served` fixture (`pytest_plugins`): one process per test, with the
test settings as they are. A module that needs other settings, or one process for all its tests,
defines its own `served` fixture around `serve(...)`, which then overrides this one there.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .helpers import run_command
from .test_processes import Service, environment_for, logged_service


@dataclass(frozen=True)
class Served:
    """A ready `serve` process and what it was started with."""

    settings: Settings  # the process's settings: its users file, key prefix and limits
    service: Service
    log: Path  # the process's output (`test_processes.stop` ends it, then reads this)
    environment: dict[str, str]  # what `serve` runs with; a command run beside it needs the same

    @property
    def port(self) -> int:
        port = urlsplit(self.service.url).port
        assert port is not None, self.service.url
        return port

    def command(
        self, *args: str, stdin: str = "", **environment: str
    ) -> subprocess.CompletedProcess[str]:
        """`python -m {{ cookiecutter.package_name }} <args>` beside the process: with its
        environment (plus `environment`), in its folder, which has no `.env`."""
        return run_command(
            args, {**self.environment, **environment}, self.settings.users_file.parent, stdin
        )

    def users(self) -> dict[str, dict[str, Any]]:
        """The users file's entries, as the commands left them."""
        return records(self.settings.users_file, "users")

    def clients(self) -> dict[str, dict[str, Any]]:
        """The clients file's entries, as the commands left them."""
        return records(self.settings.clients_file, "clients")


def records(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    document: dict[str, Any] = json.loads(path.read_text())
    return dict(document[kind])


@contextmanager
def serve(
    redis_url: str,
    key_files: dict[str, Path],
    folder: Path,
    *,
    environment: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Iterator[Served]:
    """`serve` for test settings (`conftest.make_settings`, with `overrides`) whose users file
    is in `folder`; its output goes to `folder`/service.log. Once the process is gone, the keys
    under its prefix are removed, so a shared REDIS_URL is left as it was found.

    The process gets the settings that `test_processes.environment_for` passes on (key prefix,
    users and clients files, rate limits, Redis timeout, hashing cost); any other variable, such
    as `APP_MAX_CONNECTIONS`, goes in `environment`."""
    settings = make_settings(redis_url, key_files, users_file=folder / "users.json", **overrides)
    extra = dict(environment or {})
    try:
        with logged_service(settings, redis_url, key_files, folder, **extra) as (service, log):
            environment_used = {**environment_for(settings, redis_url, key_files), **extra}
            yield Served(settings, service, log, environment_used)
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)


@pytest.fixture
def served(redis_url: str, key_files: dict[str, Path], tmp_path: Path) -> Iterator[Served]:
    """A `serve` process of this test's own, with the test settings."""
    with serve(redis_url, key_files, tmp_path) as process:
        yield process
