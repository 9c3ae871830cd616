"""A working Docker engine, and the base images a generated project builds on.

Plain functions for the template's tests (the fixtures that need Docker call them): first
`ensure_engine`, then `ensure_compose_v2` (and `compose_v1`, where the machine has it) and
`ensure_base_images`. Nothing here is a pytest fixture.

Compose v2 (`docker compose`, the generated README's command) is the docker client's own plugin
when it has one; otherwise, as root, the plugin binary of Debian trixie's `docker-compose`
package (Compose v2.26, a static Go binary that runs on bookworm) is fetched once through
Debian's signed index and put where every docker client looks for plugins.

Where no container registry can be reached, each base image the generated project names
(`python:3.14-slim`, `redis:7.4-alpine`, `nginx:1.30-alpine`) is replaced by a *stand-in*: an
image built from Debian's own packages on a minimal Debian root file system (made with
debootstrap, by `tools.roots`) and tagged with the real image's name. A `python:X.Y-slim`
stand-in is built on the Debian release whose python3 is X.Y (`PYTHON_SUITES`), an
`nginx:X.Y-*` one on the release whose nginx is X.Y (`NGINX_SUITES`), each checked to be that
version; redis on bookworm. Every stand-in carries the label `STAND_IN_LABEL`, whose value is a
digest of the recipe it was built from, so a later run can tell a stand-in from the real image
and rebuild one whose recipe has changed. Images stay in the daemon's storage, so a machine
builds each stand-in once.

Every failure is raised as `DockerUnavailable`; when a command failed it is the subclass
`CommandFailed`, whose message ends with the last lines the command printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tools import roots

# What `ensure_base_images` says about each image.
LOCAL = "local"  # a real image that was already there
PULLED = "pulled"  # a real image, pulled just now
STAND_IN = "stand-in"  # built here from Debian's packages (now or on an earlier run)

STAND_IN_LABEL = "fastapi-jwt-redis-template.stand-in"
BASE_REPOSITORY = "fastapi-jwt-redis-template/stand-in-base"  # tagged with the Debian release
DEBIAN_SUITE = "bookworm"  # the release under the stand-ins that do not depend on a Python
# The Debian release whose python3 is each version a python stand-in can be made for.
PYTHON_SUITES = {"3.11": "bookworm", "3.14": "sid"}
# The Debian release whose nginx is each major.minor an nginx stand-in can be made for: 1.30
# (a stable branch, and the first with `resolve` on upstream servers that a Debian release
# ships) from sid.
NGINX_SUITES = {"1.30": "sid"}
# Part of each base image's label value; change it whenever the way a base is made changes,
# and the bases and every stand-in on them are rebuilt.
BASE_REVISION = 3
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")  # CAs this machine adds, e.g. a proxy's
# Debian's first release whose docker-compose package is Compose v2, and the plugin in it.
COMPOSE_V2_SUITE = "trixie"
COMPOSE_V2_MEMBER = "usr/libexec/docker/cli-plugins/docker-compose"
SYSTEM_PLUGIN_DIR = Path("/usr/local/lib/docker/cli-plugins")  # searched by every docker client
LOCK_FILE = Path(tempfile.gettempdir()) / "fastapi-jwt-redis-template-docker.lock"

ENGINE_DEADLINE = 60.0  # seconds for a freshly started dockerd to answer
ENGINE_STOP_TIMEOUT = 60.0  # seconds dockerd gets to stop after SIGTERM
PROBE_TIMEOUT = 20.0
PULL_TIMEOUT = 120.0
APT_TIMEOUT = 900.0
IMPORT_TIMEOUT = 600.0  # seconds to pack and import a root file system
BUILD_TIMEOUT = 900.0
OUTPUT_TAIL_LINES = 40

_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_PACKAGE_OF_COMMAND = {
    "docker": "docker.io",
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}


class DockerUnavailable(Exception):
    """Docker, or an image the tests need, cannot be had on this machine; the message says why."""


class CommandFailed(DockerUnavailable):
    """A command run on the way to an engine or an image failed or hung.

    The first line of the message names the step and the command; the lines after it are the
    end of what the command printed.
    """

    def __init__(self, step: str, command: Sequence[str], outcome: str, output: str) -> None:
        self.command = list(command)
        self.output = output
        super().__init__(f"{step} failed: `{shlex.join(self.command)}` {outcome}\n{_tail(output)}")


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
    with _machine_lock():
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
    docker = _require_command("docker")
    with _machine_lock():
        found = _compose_version((docker, "compose"))
        if found is not None and found.major >= 2:
            return found
        if os.geteuid() != 0:
            raise DockerUnavailable(
                "`docker compose` is not Compose v2 and not root to install Debian "
                f"{COMPOSE_V2_SUITE}'s docker-compose plugin"
            )
        with _as_docker_errors():
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
    probe = _probe([*command, "version", "--short"])
    if probe is None or probe.returncode != 0:
        return None
    version = probe.stdout.strip().removeprefix("v")
    if not re.match(r"\d+\.", version):
        return None
    return Compose(command, version)


def ensure_base_images(images: Sequence[str], workdir: Path) -> dict[str, str]:
    """Make sure each named image is in the engine; say for each how it got there.

    An image already present is kept ('local', or 'stand-in' if it is one of ours and its recipe
    is unchanged). A missing one is pulled ('pulled'); when that fails, a stand-in is built from
    Debian's packages and tagged with the image's exact name ('stand-in'). Builds use temporary
    directories under `workdir`. Raises `DockerUnavailable` when an image can be had neither way.
    """
    docker = _require_command("docker")
    workdir.mkdir(parents=True, exist_ok=True)
    with _machine_lock():
        return {image: _ensure_image(docker, image, workdir) for image in images}


# Running commands


def _run(
    command: Sequence[str],
    *,
    step: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | int = subprocess.DEVNULL,
) -> str:
    """Run a command and return what it printed (stdout and stderr together).

    Raises `CommandFailed` with that output when the command exits non-zero or outlives
    `timeout`; a command that times out gets SIGTERM first, so it can clean up after itself.
    """
    with subprocess.Popen(
        list(command),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        text=True,
        errors="replace",
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            output = _terminate(process)
            raise CommandFailed(step, command, f"took over {timeout:.0f} s", output) from None
    if process.returncode != 0:
        raise CommandFailed(step, command, f"exited {process.returncode}", output)
    return output


def _terminate(process: subprocess.Popen[str]) -> str:
    """Stop a process that ran too long, gently first; return everything it printed."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def _probe(command: Sequence[str]) -> subprocess.CompletedProcess[str] | None:
    """Run a quick query whose failure is an answer, not an error; None if it hangs."""
    try:
        return subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def _tail(output: str) -> str:
    """The last lines of a command's output, marked as such."""
    lines = output.rstrip().splitlines()
    if not lines:
        return "(it printed nothing)"
    shown = lines[-OUTPUT_TAIL_LINES:]
    return f"--- last {len(shown)} of {len(lines)} lines of its output ---\n" + "\n".join(shown)


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Hold a lock shared by all processes on this machine that use this module.

    Two test runs at once then neither start two daemons nor build the same stand-in twice:
    the second one waits and finds the work done.
    """
    descriptor = os.open(LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


# Commands and packages


def _find_command(name: str) -> str | None:
    """The full path of a command, looking in the sbin directories too (dockerd lives there)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def _require_command(name: str) -> str:
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
    _run(
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
    _run(
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
    result = _probe([docker, "info", "--format", "{{.ServerVersion}}"])
    return result is not None and result.returncode == 0 and bool(result.stdout.strip())


def _dockerd_command(dockerd: str) -> list[str]:
    """How dockerd is started: with its defaults (socket /var/run/docker.sock)."""
    return [dockerd]


def _start_engine(workdir: Path) -> Engine:
    """Start dockerd in the background and wait until it answers."""
    dockerd = _require_command("dockerd")
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
                + _tail(_read_text(log_path))
            )
        if time.monotonic() > deadline:
            raise DockerUnavailable(
                f"dockerd did not answer `docker info` within {ENGINE_DEADLINE:.0f} s; "
                f"see {log_path}\n" + _tail(_read_text(log_path))
            )
        time.sleep(0.5)


def _read_text(path: Path) -> str:
    """A log file's text, or an empty string if it cannot be read."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# Images


def _ensure_image(docker: str, image: str, workdir: Path) -> str:
    """Make one image present; return LOCAL, PULLED or STAND_IN."""
    present = _inspect_image(docker, image)
    if present is not None:
        if STAND_IN_LABEL not in present.labels:
            return LOCAL
        with contextlib.suppress(DockerUnavailable):
            if present.labels[STAND_IN_LABEL] == _stand_in_recipe(image).digest:
                return STAND_IN
    outcome = _pull_or_build(docker, image, workdir)
    if present is not None:
        _remove_image(docker, present.image_id)  # the outdated stand-in the new image replaced
    return outcome


def _pull_or_build(docker: str, image: str, workdir: Path) -> str:
    """Pull an image, or build its stand-in when it cannot be pulled; return PULLED or STAND_IN."""
    pull_failure = _try_pull(docker, image)
    if pull_failure is None:
        return PULLED
    try:
        recipe = _stand_in_recipe(image)
    except DockerUnavailable as error:
        raise DockerUnavailable(f"cannot pull {image} ({pull_failure}), and {error}") from None
    _ensure_base(docker, workdir, recipe.suite)
    _build_stand_in(docker, image, recipe, workdir)
    return STAND_IN


@dataclass(frozen=True)
class _PresentImage:
    """What this module needs to know of an image the engine has."""

    image_id: str
    labels: Mapping[str, str]
    tags: tuple[str, ...]


def _inspect_image(docker: str, image: str) -> _PresentImage | None:
    """The ID and labels of an image present in the engine, or None if it is not there."""
    result = _probe([docker, "image", "inspect", image])
    if result is None or result.returncode != 0:
        return None
    details = json.loads(result.stdout)[0]
    config = details.get("Config") or {}
    return _PresentImage(
        image_id=details["Id"],
        labels=dict(config.get("Labels") or {}),
        tags=tuple(details.get("RepoTags") or ()),
    )


def _remove_image(docker: str, image_id: str) -> None:
    """Remove an image that no name points to any more, if nothing uses it; never fail.

    An image that still has a name is kept: identical builds share one image, so the stand-in
    just replaced under one name may still be in use under another.
    """
    present = _inspect_image(docker, image_id)
    if present is not None and not present.tags:
        _probe([docker, "image", "rm", image_id])


def _try_pull(docker: str, image: str) -> str | None:
    """Pull an image; None when that worked, else the reason in one line."""
    try:
        _run([docker, "pull", image], step=f"pulling {image}", timeout=PULL_TIMEOUT)
    except CommandFailed as failure:
        lines = failure.output.strip().splitlines()
        return lines[-1] if lines else str(failure).splitlines()[0]
    return None


def _split_reference(image: str) -> tuple[str, str]:
    """Split an image name into repository and tag: 'python:3.11-slim' -> ('python', '3.11-slim').

    Docker Hub's implicit prefixes are dropped, so 'docker.io/library/redis:7' gives 'redis'.
    """
    repository, tag = image, "latest"
    if ":" in image.rsplit("/", 1)[-1]:
        repository, tag = image.rsplit(":", 1)
    for prefix in ("index.docker.io/", "docker.io/", "library/"):
        repository = repository.removeprefix(prefix)
    return repository, tag


# Stand-in recipes


def _base_tag(suite: str) -> str:
    """The name of the minimal Debian image of one release that stand-ins are built on."""
    return f"{BASE_REPOSITORY}:{suite}"


def _base_version(suite: str) -> str:
    """The label value of a base image, naming how it was made."""
    return f"debootstrap-minbase-{suite}-{BASE_REVISION}"


@dataclass(frozen=True)
class _Recipe:
    """What a stand-in is built from: the Debian release of its base image, a Dockerfile that
    starts `FROM` that base, and the other files of its build context."""

    suite: str
    dockerfile: str
    files: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short fingerprint of the base and the whole build context; it changes when either
        does."""
        hasher = hashlib.sha256(f"{_base_version(self.suite)}\0{self.dockerfile}".encode())
        for name in sorted(self.files):
            content = self.files[name]
            hasher.update(f"\0{name}\0{len(content)}\0".encode())
            hasher.update(content)
        return hasher.hexdigest()[:16]

    def write(self, context: Path) -> None:
        """Lay the build context out in an empty directory."""
        (context / "Dockerfile").write_text(self.dockerfile)
        for name, content in self.files.items():
            target = context / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def _stand_in_recipe(image: str) -> _Recipe:
    """The recipe of the stand-in for an image; raise `DockerUnavailable` if there is none."""
    repository, tag = _split_reference(image)
    if repository == "python":
        return _python_recipe(tag)
    if repository == "redis":
        return _redis_recipe()
    if repository == "nginx":
        return _nginx_recipe(tag)
    raise DockerUnavailable(f"there is no stand-in recipe for {image}")


def _apt_install_step(*packages: str) -> str:
    """A shell command for a Dockerfile RUN: install packages, leave no package lists behind."""
    return (
        "apt-get update"
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(packages)
        + " && apt-get clean && rm -rf /var/lib/apt/lists/*"
    )


def _require_step(*commands: str) -> str:
    """A shell command for a Dockerfile RUN that fails the build if a command is missing."""
    names = " ".join(commands)
    return f'for c in {names}; do command -v "$c" >/dev/null || {{ echo "no $c"; exit 1; }}; done'


def _python_recipe(tag: str) -> _Recipe:
    """python:X.Y-slim from the python3 of the Debian release whose python3 is X.Y, with
    `python`, venv, pip and this machine's CAs.

    pip and uv inside a build must trust the same extra certificate authorities as this machine
    (an egress proxy's, for instance), so they are copied into the image and the bundle is named
    by PIP_CERT (pip) and SSL_CERT_FILE (uv, and Python's ssl module).
    """
    version = re.match(r"(\d+\.\d+)(?:-|$)", tag)
    suite = None if version is None else PYTHON_SUITES.get(version[1])
    if suite is None:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in PYTHON_SUITES.items())
        raise DockerUnavailable(
            f"a stand-in for python exists only for {offered}, not for python:{tag}"
        )
    install = _apt_install_step(
        "python3",
        "python3-venv",
        "python3-pip",
        "python-is-python3",
        "ca-certificates",
        "passwd",
    )
    require = _require_step("python", "python3", "pip", "groupadd", "useradd", "install")
    # The release's python3 must be the version the tag names, or the stand-in would lie.
    major, minor = version[1].split(".")
    check_version = (
        f"python -c 'import sys; assert sys.version_info[:2] == ({major}, {minor}), sys.version'"
    )
    dockerfile = textwrap.dedent(
        f"""\
        FROM {_base_tag(suite)}
        ENV LANG=C.UTF-8 \\
            PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
            SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
        COPY extra-ca/ /usr/local/share/ca-certificates/
        RUN {install} \\
            && update-ca-certificates \\
            && rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED \\
            && {require} \\
            && {check_version}
        CMD ["python3"]
        """
    )
    files = {"extra-ca/README": b"Certificate authorities copied from the build machine.\n"}
    for certificate in sorted(EXTRA_CA_DIR.rglob("*.crt")):
        files[f"extra-ca/{certificate.relative_to(EXTRA_CA_DIR)}"] = certificate.read_bytes()
    return _Recipe(suite, dockerfile, files)


def _redis_recipe() -> _Recipe:
    """redis from Debian's redis-server and redis-tools, run as user redis in /data."""
    install = _apt_install_step("redis-server", "redis-tools")
    require = _require_step("redis-server", "redis-cli")
    dockerfile = textwrap.dedent(
        f"""\
        FROM {_base_tag(DEBIAN_SUITE)}
        RUN {install} \\
            && mkdir -p /data \\
            && chown redis:redis /data \\
            && {require}
        WORKDIR /data
        USER redis
        EXPOSE 6379
        CMD ["redis-server"]
        """
    )
    return _Recipe(DEBIAN_SUITE, dockerfile)


_NGINX_DEFAULT_SITE = b"""\
# The stand-in's welcome page, like the real image's; a project mounts its own file here.
server {
    listen 80;
    server_name localhost;

    location / {
        root /usr/share/nginx/html;
        index index.html;
    }
}
"""


def _nginx_recipe(tag: str) -> _Recipe:
    """nginx:X.Y-* from the nginx of the Debian release whose nginx is X.Y: logs to
    stdout/stderr, sites in conf.d/, in the foreground. The build fails if that release's nginx
    is no longer X.Y, so the stand-in never claims a version it is not."""
    version = re.match(r"(\d+\.\d+)(?:[.-]|$)", tag)
    suite = None if version is None else NGINX_SUITES.get(version[1])
    if suite is None:
        offered = ", ".join(f"{v} (Debian {s})" for v, s in NGINX_SUITES.items())
        raise DockerUnavailable(
            f"a stand-in for nginx exists only for {offered}, not for nginx:{tag}"
        )
    install = _apt_install_step("nginx")
    check_version = f"nginx -v 2>&1 | grep -q 'nginx/{re.escape(version[1])}\\.'"
    dockerfile = textwrap.dedent(
        f"""\
        FROM {_base_tag(suite)}
        RUN {install} \\
            && rm -f /etc/nginx/sites-enabled/default \\
            && ln -sf /dev/stdout /var/log/nginx/access.log \\
            && ln -sf /dev/stderr /var/log/nginx/error.log \\
            && grep -q 'include /etc/nginx/conf.d/\\*.conf;' /etc/nginx/nginx.conf \\
            && test -f /usr/share/nginx/html/index.html \\
            && {check_version}
        COPY default.conf /etc/nginx/conf.d/default.conf
        EXPOSE 80
        STOPSIGNAL SIGQUIT
        CMD ["nginx", "-g", "daemon off;"]
        """
    )
    return _Recipe(suite, dockerfile, {"default.conf": _NGINX_DEFAULT_SITE})


def _build_stand_in(docker: str, image: str, recipe: _Recipe, workdir: Path) -> None:
    """Build a stand-in with the classic builder and tag it with the image's name."""
    repository, _ = _split_reference(image)
    with tempfile.TemporaryDirectory(prefix=f"stand-in-{repository}-", dir=workdir) as context:
        recipe.write(Path(context))
        _run(
            [
                docker,
                "build",
                "--force-rm",
                "--label",
                f"{STAND_IN_LABEL}={recipe.digest}",
                "--tag",
                image,
                context,
            ],
            step=f"building a stand-in for {image}",
            timeout=BUILD_TIMEOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )


# The stand-ins' Debian base


def _ensure_base(docker: str, workdir: Path, suite: str) -> None:
    """Make sure the minimal Debian image of `suite` that stand-ins build on is in the engine.

    It is made once per machine: debootstrap writes a root file system (`tools.roots`, with
    this machine's apt settings and no service starts), which is imported.
    """
    tag, version = _base_tag(suite), _base_version(suite)
    present = _inspect_image(docker, tag)
    if present is not None and present.labels.get(STAND_IN_LABEL) == version:
        return
    if os.geteuid() != 0:
        raise DockerUnavailable("making the stand-ins' Debian base with debootstrap needs root")
    build_dir = Path(tempfile.mkdtemp(prefix=f"stand-in-base-{suite}-", dir=workdir))
    rootfs = build_dir / "rootfs"
    try:
        with _as_docker_errors():
            roots.debootstrap(suite, rootfs)
            roots.forbid_service_starts(rootfs)
            roots.follow_host_apt_settings(rootfs)
        _drop_apt_caches(rootfs)
        _import_rootfs(docker, rootfs, build_dir / "tar-errors.log", tag, version)
    finally:
        roots.remove_tree(build_dir)
    if present is not None:
        _remove_image(docker, present.image_id)  # an outdated base, unless stand-ins still use it


@contextlib.contextmanager
def _as_docker_errors() -> Iterator[None]:
    """`tools.roots`' errors as this module's: a command that failed stays a failure."""
    try:
        yield
    except roots.CommandFailed as failed:
        raise CommandFailed(failed.step, failed.command, failed.outcome, failed.output) from None
    except roots.RootUnavailable as missing:
        raise DockerUnavailable(str(missing)) from None


def _drop_apt_caches(rootfs: Path) -> None:
    """Delete the packages debootstrap downloaded and apt's lists and caches: images need none."""
    leftovers = [
        *rootfs.glob("var/cache/apt/archives/*.deb"),
        *rootfs.glob("var/cache/apt/*.bin"),
        *(path for path in rootfs.glob("var/lib/apt/lists/*") if path.is_file()),
    ]
    for path in leftovers:
        if path.name != "lock":
            path.unlink()


def _import_rootfs(docker: str, rootfs: Path, tar_log: Path, tag: str, version: str) -> None:
    """Pack a root file system with tar and import it into the engine as `tag`, labelled with
    the `version` of the way it was made."""
    tar_command = ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."]
    import_command = [
        docker,
        "import",
        "--change",
        f"LABEL {STAND_IN_LABEL}={version}",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["bash"]',
        "-",
        tag,
    ]
    with (
        tar_log.open("wb") as tar_errors,
        subprocess.Popen(tar_command, stdout=subprocess.PIPE, stderr=tar_errors) as tar,
    ):
        assert tar.stdout is not None
        try:
            _run(
                import_command,
                step="importing the Debian root file system",
                timeout=IMPORT_TIMEOUT,
                stdin=tar.stdout,
            )
        finally:
            tar.stdout.close()  # should the import stop early, tar stops too
    if tar.returncode != 0:
        raise CommandFailed(
            "packing the Debian root file system",
            tar_command,
            f"exited {tar.returncode}",
            _read_text(tar_log),
        )
