"""The generated README's first commands: as many as the template says, and safe to copy."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .baking import TEMPLATE_DIR, bake

NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the first `sh` block of "From zero to a logged-in request", one each.

    A line that ends in a backslash goes on in the next one, so a pipe split over two lines
    is one command.
    """
    match = re.search(
        r"^## From zero to a logged-in request$.*?^```sh$\n(.*?)^```$", readme, re.DOTALL | re.M
    )
    assert match is not None, "README.md has no quickstart block"
    lines = match[1].replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("readme"))


@pytest.fixture(scope="module")
def commands(project: Path) -> list[str]:
    return quickstart_commands((project / "README.md").read_text())


def test_the_template_readme_counts_the_quickstart_commands(commands: list[str]) -> None:
    claim = re.search(
        r"to a logged-in request in\s+(\w+)\s+commands", (TEMPLATE_DIR / "README.md").read_text()
    )
    assert claim is not None
    assert commands[0].startswith("make install")  # counted from `make install`, as it says
    assert claim[1] == NUMBER_WORDS[len(commands) - 1], commands


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_quickstart_redis_leaves_nothing_in_the_project(
    project: Path, commands: list[str], tmp_path: Path
) -> None:
    """The README's redis-server, run in the foreground, writes nothing where it ran.

    A Redis that saves would put dump.rdb in the project and bring old sessions back when it
    starts again there.
    """
    redis_server = shutil.which("redis-server")
    assert redis_server is not None, "redis-server is missing; `make test` installs it with apt"
    (command,) = [command for command in commands if command.startswith("redis-server ")]
    arguments = shlex.split(command, comments=True)[1:]
    daemonize = arguments.index("--daemonize")
    del arguments[daemonize : daemonize + 2]  # stay in the foreground, so the test can stop it
    port = free_port()
    server = subprocess.Popen(
        [redis_server, *arguments, "--port", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        cli = ["redis-cli", "-p", str(port)]
        for _ in range(200):  # until it answers; a server that exited fails the assert below
            if server.poll() is not None:
                break
            if subprocess.run([*cli, "ping"], capture_output=True, text=True).stdout == "PONG\n":
                break
            time.sleep(0.05)
        assert server.poll() is None, f"redis-server {' '.join(arguments)} did not start"
        subprocess.run([*cli, "set", "p:{alice}:sess:1", "alive"], check=True, capture_output=True)
        # SHUTDOWN saves first when any save point is configured; then the server exits.
        subprocess.run([*cli, "shutdown"], capture_output=True)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_what_a_local_redis_could_save_is_git_ignored(project: Path) -> None:
    ignored = set((project / ".gitignore").read_text().splitlines())
    assert {"dump.rdb", "appendonly.aof", "appendonlydir/"} <= ignored
