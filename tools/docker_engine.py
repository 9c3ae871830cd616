"""A working Docker engine and its Compose commands, for the template's Docker tests.

Plain functions (the fixtures that need Docker call them): first `ensure_engine`, then
`ensure_compose_v2` (and `compose_v1`, where the machine has it); the base images come next,
from `tools.stand_ins.ensure_base_images`. Nothing here is a pytest fixture.

Compose v2 (`docker compose`, the generated README's command) is the docker client's own plugin
when it has one; otherwise, as root, the plugin binary of Debian trixie's `docker-compose`
package (Compose v2.26, a static Go binary that runs on bookworm) is fetched once through
Debian's signed index and put where every docker client looks for plugins.

Invariants:

- An engine that already answers is reused and never stopped; one started here is stopped by
  `Engine.stop` and by nothing else.
- Every step that installs or starts something holds `machine_lock`, shared by every process on
  this machine that uses this module or `tools.stand_ins`: two test runs at once neither start
  two daemons nor build the same stand-in twice.

Every failure is raised as `DockerUnavailable`; when a command failed it is the subclass
`CommandFailed` (also a `tools.commands.CommandFailed`), whose message ends with the last lines
the command printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools import commands, roots

# Debian's first release whose docker-compose package is Compose v2, and the plugin in it.
COMPOSE_V2_SUITE = "trixie"
COMPOSE_V2_MEMBER = "usr/libexec/docker/cli-plugins/docker-compose"
SYSTEM_PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")  # searched by every docker client
LOCK_FILE = Path(tempfile.gettempdir()) / "fastapi-jwt-redis-template-docker.lock"
STACK_LOCK_FILE = Path(tempfile.gettempdir()) / "fastapi-jwt-redis-template-docker-stack.lock"

ENGINE_DEADLINE = 60.0  # seconds for a freshly started dockerd to answer
ENGINE_STOP_TIMEOUT = 60.0  # seconds dockerd gets to stop after SIGTERM
APT_TIMEOUT = 900.0  # seconds for one apt-get run

_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_PACKAGE_OF_COMMAND = {
    "docker": "docker.io",
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}


class DockerUnavailable(Exception):
    """Docker, or an image the tests need, cannot be had on this machine; the message says why."""


class CommandFailed(commands.CommandFailed, DockerUnavailable):
    """A command run on the way to an engine or an image failed or hung.

    The first line of the message names the step and the command; the lines after it are the
    end of what the command printed.
    """


# Every command run on the way to an engine or an image, raising this module's `CommandFailed`.
run = functools.partial(commands.run, failure=CommandFailed)


@dataclass
class Engine:
    """The Docker engine the tests use, and whether this module is the one that started it."""

    started_here: bool
    process: subprocess.Popen[bytes] | None
    log_path: Path | None = None

    def stop(self) -> None:
        """Stop dockerd if this module started it (SIGTERM, then wait); otherwise do nothing."""
        process = self.process
        if not self.started_here or process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=ENGINE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ensure_engine(workdir: Path) -> Engine:
    """Return a Docker engine that answers `docker info`.

    An engine that already answers is reused and left running. Otherwise the missing commands
    (docker, dockerd, docker-compose; debootstrap comes along) are installed with apt when
    running as root on a machine that has apt-get, and dockerd is started in the background with
    its log in `workdir/dockerd.log`; `Engine.stop` stops it again. Raises `DockerUnavailable`
    when none of this is possible.
    """
    with machine_lock():
        _install_missing(("docker", "docker-compose"), also=("dockerd", "debootstrap"))
        if _engine_answers():
            return Engine(started_here=False, process=None)
        if os.geteuid() != 0:
            raise DockerUnavailable(
                "the Docker engine does not answer and not root to start dockerd"
            )
        _install_missing(("dockerd",))
        return _start_engine(workdir)


@dataclass(frozen=True)
class Compose:
    """One Compose command line and the version it reported."""

    command: tuple[str, ...]
    version: str  # as `version --short` prints it, without a leading "v": "2.26.1-4", "1.29.2"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __str__(self) -> str:
        """`docker compose 2.26.1-4`, `docker-compose 1.29.2`."""
        return " ".join([Path(self.command[0]).name, *self.command[1:], self.version])


def ensure_compose_v2() -> Compose:
    """`docker compose`, as Compose v2: the docker client's plugin if it has one, else (as root)
    Debian trixie's plugin installed into `SYSTEM_PLUGIN_DIR`. Raises `DockerUnavailable` when
    neither is possible."""
    docker = require_command("docker")
    with machine_lock():
        found = _compose_version((docker, "compose"))
        if found is not None and found.major >= 2:
            return found
        if os.geteuid() != 0:
            raise DockerUnavailable(
                "`docker compose` is not Compose v2 and not root to install Debian "
                f"{COMPOSE_V2_SUITE}'s docker-compose plugin"
            )
        with as_docker_errors():
            plugin = roots.debian_file("docker-compose", COMPOSE_V2_SUITE, COMPOSE_V2_MEMBER)
        SYSTEM_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        installed = SYSTEM_PLUGIN_DIR / "docker-compose"
        shutil.copy(plugin, installed.with_suffix(".partial"))
        installed.with_suffix(".partial").rename(installed)
        found = _compose_version((docker, "compose"))
        if found is None or found.major < 2:
            raise DockerUnavailable(
                f"installed Debian {COMPOSE_V2_SUITE}'s Compose plugin as {installed}, but "
                f"`{docker} compose version` still does not report v2 ({found})"
            )
        return found


def compose_v1() -> Compose | None:
    """`docker-compose` when it is Compose v1 (Debian bookworm's package), else None."""
    legacy = _find_command("docker-compose")
    if legacy is None:
        return None
    found = _compose_version((legacy,))
    return found if found is not None and found.major == 1 else None


def _compose_version(command: tuple[str, ...]) -> Compose | None:
    probe = commands.probe([*command, "version", "--short"])
    if probe is None or probe.returncode != 0:
        return None
    version = probe.stdout.strip().removeprefix("v")
    if not re.match(r"\d+\.", version):
        return None
    return Compose(command, version)


# One machine, one engine


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold a lock shared by all processes on this machine that use this module or
    `tools.stand_ins`.

    Two test runs at once then neither start two daemons nor build the same stand-in twice:
    the second one waits and finds the work done.
    """
    descriptor = os.open(LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def stack_lock() -> Iterator[None]:
    """Hold, for one running compose project, a lock shared by every test run on this machine.

    Two runs can each give their compose project a name of its own, but not the rest of what a
    bake's compose files fix as generated: the app's image is `<project_slug>:local` in both
    files, and `compose.scale.yaml` gives its network a fixed subnet. Two runs at once on one
    engine would tag each other's image (one would start the other's code) or fail to create
    the second network; holding this lock from `build` to `down`, they take turns instead.
    It is not `machine_lock`, which a run takes only while it installs or builds.
    """
    descriptor = os.open(STACK_LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


# Commands and packages


def _find_command(name: str) -> str | None:
    """The full path of a command, looking in the sbin directories too (dockerd lives there)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def require_command(name: str) -> str:
    """The full path of a command that must be there."""
    path = _find_command(name)
    if path is None:
        raise DockerUnavailable(f"no {name} on PATH")
    return path


def _install_missing(needed: Sequence[str], also: Sequence[str] = ()) -> None:
    """Install with apt the packages of whichever `needed` commands are missing.

    Missing commands in `also` are installed in the same apt run, but only when one is made
    anyway. Raises `DockerUnavailable` when something is missing and apt cannot be used.
    """
    missing = [name for name in needed if _find_command(name) is None]
    if not missing:
        return
    wanted = [*missing, *(name for name in also if _find_command(name) is None)]
    packages = sorted({_PACKAGE_OF_COMMAND[name] for name in wanted})
    apt_get = _find_command("apt-get")
    if os.geteuid() != 0 or apt_get is None:
        raise DockerUnavailable(
            f"no {', '.join(missing)} on PATH and not root with apt-get to install "
            f"{' '.join(packages)}"
        )
    _apt_update(apt_get)
    run(
        [apt_get, "install", "-y", "-q", *packages],
        step=f"installing {' '.join(packages)}",
        timeout=APT_TIMEOUT,
        env=_apt_environment(),
    )
    still_missing = [name for name in missing if _find_command(name) is None]
    if still_missing:
        raise DockerUnavailable(
            f"installed {' '.join(packages)} but still no {', '.join(still_missing)} on PATH"
        )


@functools.cache
def _apt_update(apt_get: str) -> None:
    """Refresh apt's package lists, once per process."""
    run(
        [apt_get, "update", "-q"],
        step="refreshing apt's package lists",
        timeout=APT_TIMEOUT,
        env=_apt_environment(),
    )


def _apt_environment() -> dict[str, str]:
    """This process's environment, with apt told never to ask questions."""
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


# The engine


def _engine_answers() -> bool:
    """Whether a Docker engine answers `docker info` now."""
    docker = _find_command("docker")
    if docker is None:
        return False
    result = commands.probe([docker, "info", "--format", "{{.ServerVersion}}"])
    return result is not None and result.returncode == 0 and bool(result.stdout.strip())


def _dockerd_command(dockerd: str) -> list[str]:
    """How dockerd is started: with its defaults (socket /var/run/docker.sock)."""
    return [dockerd]


def _start_engine(workdir: Path) -> Engine:
    """Start dockerd in the background and wait until it answers."""
    dockerd = require_command("dockerd")
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "dockerd.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _dockerd_command(dockerd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C aimed at the tests does not reach it
        )
    engine = Engine(started_here=True, process=process, log_path=log_path)
    try:
        _wait_for_engine(process, log_path)
    except BaseException:
        engine.stop()
        raise
    if process.poll() is not None:
        # Ours exited, yet an engine answers: another one was starting at the same time.
        return Engine(started_here=False, process=None)
    return engine


def _wait_for_engine(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Wait until an engine answers; raise if dockerd exits first or the deadline passes."""
    deadline = time.monotonic() + ENGINE_DEADLINE
    while not _engine_answers():
        if process.poll() is not None:
            if _engine_answers():
                return
            raise DockerUnavailable(
                f"dockerd exited {process.returncode} before answering; see {log_path}\n"
                + commands.tail(commands.read_text(log_path))
            )
        if time.monotonic() > deadline:
            raise DockerUnavailable(
                f"dockerd did not answer `docker info` within {ENGINE_DEADLINE:.0f} s; "
                f"see {log_path}\n" + commands.tail(commands.read_text(log_path))
            )
        time.sleep(0.5)


@contextlib.contextmanager
def as_docker_errors() -> Iterator[None]:
    """`tools.roots`' errors as this module's: a command that failed stays a failure."""
    try:
        yield
    except roots.CommandFailed as failed:
        raise CommandFailed(failed.step, failed.command, failed.outcome, failed.output) from None
    except roots.RootUnavailable as missing:
        raise DockerUnavailable(str(missing)) from None
