"""The generated README's first commands: as many as the template says, and safe to copy."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .baking import HOST_PYTHON, TEMPLATE_DIR, bake, clean_environment, install_into

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


def test_the_quickstart_redis_is_on_the_port_env_points_the_service_at(
    project: Path, commands: list[str]
) -> None:
    """Not Redis's 6379, where a distribution's redis-server (apt starts one) or another
    project's may listen already: `redis-server --daemonize yes` says nothing when its port is
    taken, and the service would use that other Redis."""
    (command,) = [command for command in commands if command.startswith("redis-server ")]
    arguments = shlex.split(command, comments=True)[1:]
    port = arguments[arguments.index("--port") + 1]
    assert port != "6379"
    env = dict(
        line.split("=", 1)
        for line in (project / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env["APP_REDIS_URL"] == f"redis://127.0.0.1:{port}/0"
    assert f"redis-cli -p {port} config get dir" in (project / "README.md").read_text()


def test_what_a_local_redis_could_save_is_git_ignored(project: Path) -> None:
    ignored = set((project / ".gitignore").read_text().splitlines())
    assert {"dump.rdb", "appendonly.aof", "appendonlydir/"} <= ignored


# The README's recipes for service accounts and for a second service, run as written: pasted
# into one shell, in a project where `make install` has run, after the quickstart's steps.

STEP_MARK = "@@ step done @@"
RECIPE_SECONDS = 180  # a bound for a recipe that hangs, not a speed claim


# A command, and the output the README shows for it (None: not compared).
Step = tuple[str, str | None]


def console_steps(readme: str, heading: str) -> list[Step]:
    """The commands of the first `console` block in the section `heading` (up to the next
    heading), each with the output the README shows after it. A command starts with `$ `; a
    line ending in a backslash goes on in the next one; other lines are output."""
    section = re.search(rf"^#+ {re.escape(heading)}$(.*?)(?=^#+ |\Z)", readme, re.DOTALL | re.M)
    assert section is not None, f"README.md has no section {heading!r}"
    match = re.search(r"^```console$\n(.*?)^```$", section[1], re.DOTALL | re.M)
    assert match is not None, f"README.md has no console block under {heading!r}"
    steps: list[tuple[str, str]] = []
    continued = False
    for line in match[1].splitlines():
        if continued:
            command, output = steps[-1]
            steps[-1] = (command + "\n" + line, output)
        elif line.startswith("$ "):
            steps.append((line[2:], ""))
        else:
            assert steps, f"output before any command under {heading!r}"
            command, output = steps[-1]
            steps[-1] = (command, output + line + "\n")
        continued = line.endswith("\\")
    return list(steps)


@dataclass
class Ports:
    """Free ports standing in for the README's 8000 and 8001."""

    first: int
    second: int

    def apply(self, command: str) -> str:
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.first}")
        command = command.replace("127.0.0.1:8001", f"127.0.0.1:{self.second}")
        return command.replace("--port 8001", f"--port {self.second}")


def run_steps(
    steps: list[Step], project: Path, environment: dict[str, str], log: Path
) -> list[str]:
    """Run the commands in one bash (variables carry over, as in a terminal), stopping at the
    first that fails; return what each printed. A command put in the background writes to
    `log` instead of the terminal. Everything it started is stopped afterwards."""
    lines = ["set -eu"]
    for command, _ in steps:
        command = re.sub(r"\s+#\s.*$", "", command)  # a trailing comment
        if command.endswith("&"):
            command = f"{command[:-1].rstrip()} >>{shlex.quote(str(log))} 2>&1 &"
        lines += [command, f"printf '\\n%s\\n' '{STEP_MARK}'"]
    process = subprocess.Popen(
        ["bash", "-c", "\n".join(lines)],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the background services included
    )
    try:
        stdout, stderr = process.communicate(timeout=RECIPE_SECONDS)
    finally:
        stop_group(process)
    outputs = stdout.split(f"\n{STEP_MARK}\n")
    done = len(outputs) - 1
    if process.returncode != 0 or done != len(steps):
        pytest.fail(
            f"stopped at {steps[min(done, len(steps) - 1)][0]!r} (exit {process.returncode})\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- services ---\n"
            f"{log.read_text() if log.exists() else ''}",
            pytrace=False,
        )
    return outputs[:-1]


def stop_group(process: subprocess.Popen[str]) -> None:
    """Stop every process the shell started (they share its process group), then the shell."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        try:
            os.killpg(process.pid, sig)
            while time.monotonic() < deadline:
                os.killpg(process.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            break
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.fixture
def recipe_redis(tmp_path: Path) -> Iterator[str]:
    """A throwaway redis-server standing in for the quickstart's; its URL."""
    assert shutil.which("redis-server"), "redis-server is missing; `make test` installs it with apt"
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            ping = subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True
            )
            if ping.stdout == "PONG\n" or server.poll() is not None:
                break
            time.sleep(0.05)
        assert server.poll() is None, "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait()


def installed_bake(output_dir: Path, bake_venv: Path, algorithm: str) -> Path:
    """A bake in which `make install` has run: the shared virtualenv, with this bake's package,
    as its `.venv`."""
    project = bake(output_dir, jwt_algorithm=algorithm, python_version=HOST_PYTHON)
    install_into(bake_venv, project)
    (project / ".venv").symlink_to(bake_venv, target_is_directory=True)
    return project


def assert_outputs(steps: list[Step], outputs: list[str]) -> None:
    for (command, expected), output in zip(steps, outputs, strict=True):
        if expected is not None:
            assert output.strip() == expected.strip(), command


@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_the_service_account_recipe_runs_as_written(
    tmp_path: Path, bake_venv: Path, recipe_redis: str, algorithm: str
) -> None:
    project = installed_bake(tmp_path / "bake", bake_venv, algorithm)
    readme = (project / "README.md").read_text()
    ports = Ports(free_port(), free_port())
    (serve,) = [command for command in quickstart_commands(readme) if "make run" in command]
    ready = "until curl -sf -o /dev/null http://127.0.0.1:8000/health/ready; do sleep 0.2; done"
    recipe = console_steps(readme, "Service accounts")
    steps: list[Step] = [(ports.apply(serve), None), (ports.apply(ready), None)]
    steps += [(ports.apply(command), output) for command, output in recipe]
    environment = clean_environment(APP_REDIS_URL=recipe_redis, APP_PORT=str(ports.first))
    outputs = run_steps(steps, project, environment, tmp_path / "services.log")
    assert_outputs(steps, outputs)


def test_the_second_service_recipe_runs_as_written(
    tmp_path: Path, bake_venv: Path, recipe_redis: str
) -> None:
    """A second service finds the first by its issuer URL alone (RS256 or ES256: an HS256
    bake's README explains why it cannot, and shows no recipe)."""
    project = installed_bake(tmp_path / "bake", bake_venv, "ES256")
    readme = (project / "README.md").read_text()
    ports = Ports(free_port(), free_port())
    (create_user,) = [line for line in quickstart_commands(readme) if "create-user" in line]
    steps: list[Step] = [(create_user, None)]
    steps += [
        (ports.apply(command), output)
        for command, output in console_steps(readme, "A second service against the first")
    ]
    environment = clean_environment(APP_REDIS_URL=recipe_redis, APP_PORT=str(ports.first))
    outputs = run_steps(steps, project, environment, tmp_path / "services.log")
    assert_outputs(steps, outputs)


def test_an_hs256_readme_shows_no_second_service_recipe(project: Path) -> None:
    readme = (project / "README.md").read_text()
    with pytest.raises(AssertionError, match="no console block"):
        console_steps(readme, "A second service against the first")
    assert "publishes no keys" in readme
