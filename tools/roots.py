"""Root file systems that hold real interpreters: made once with debootstrap, entered with chroot.

A generated project promises to work on every Python its `python_version` answer offers, and
this machine has only one. Debian's and Ubuntu's archives have the others. A *root* is a minimal
Debian or Ubuntu file system (debootstrap, variant minbase) with the packages a generated
project's suite needs: its interpreters with venv, make, redis-server (redis-cli comes along),
git and CA certificates. `ROOT_OF_PYTHON` says which root holds which version.

Invariants:

- A root is made once per machine and kept in `CACHE_DIR/<name>/rootfs`, outside any checkout.
  It is built in a scratch directory beside that place and renamed into it only when complete,
  with `MARKER` (its recipe) written last; a root whose marker is missing or names another recipe
  is made again. Building holds the root's lock exclusively and every command run inside holds
  it shared, so a root is never replaced under a running command, while any number of commands
  share one root at once.
- Nothing is ever mounted in the machine's own mount table. Each command runs in a mount
  namespace of its own (`unshare --mount`), where /proc, /dev, a fresh /tmp, /etc/resolv.conf,
  the machine's CA bundle (read-only) and the directories it is given (at their own paths) are
  mounted before `chroot`. The kernel takes those mounts down when the namespace's last process
  exits: after a pass, a failure or a kill alike, and parallel commands never see each other's.
- The environment inside is `environment()`: fixed values, with the CA bundle named by
  SSL_CERT_FILE and PIP_CERT, and of the machine's own variables only the network settings in
  `PASSED_THROUGH`.

Making or entering a root needs root, and apt-get when debootstrap is missing (it is installed
then); otherwise `RootUnavailable` says what is missing. A command that fails raises its subclass
`CommandFailed`, whose message ends with the last lines the command printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools import commands

CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "fastapi-jwt-redis-template"
    / "roots"
)
MARKER = "complete.json"  # beside rootfs/: the recipe the root was made from, written last

DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# archive.ubuntu.com serves amd64 and i386 only; other architectures live on ports.ubuntu.com.
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
# debootstrap's script for every Ubuntu release since 7.10: the releases newer than the
# debootstrap on this machine have no file of their own and are named to it explicitly.
UBUNTU_SCRIPT = Path("/usr/share/debootstrap/scripts/gutsy")

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # with the CAs this machine adds
ROOT_CA_BUNDLE = "/etc/ssl/host-ca-certificates.crt"  # where that bundle appears inside a root
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The machine's variables that say how to reach the network; nothing else enters a root.
PASSED_THROUGH = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
)

# This machine's apt settings that a root's apt follows: how to reach the archives (a proxy)
# and whether their indexes' dates are checked (not, for a frozen mirror).
HOST_APT_SETTINGS = (
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
)

DEBOOTSTRAP_TIMEOUT = 900.0  # seconds; about 45 s on two cores, the rest for a slow mirror
APT_TIMEOUT = 900.0  # seconds for one apt-get run: a few hundred MB from a slow mirror

_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
# Commands used on this machine, and the package that brings each (all but debootstrap are part
# of every Debian and Ubuntu installation).
_HOST_COMMANDS = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "flock": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
}


class RootUnavailable(Exception):
    """A root file system cannot be made or entered on this machine; the message says why."""


class CommandFailed(commands.CommandFailed, RootUnavailable):
    """A command failed or hung; the message names it and ends with the end of its output."""


# Every command this module runs, raising this module's `CommandFailed` (tools.commands.run).
_run = functools.partial(commands.run, failure=CommandFailed)


@dataclass(frozen=True)
class Recipe:
    """How one root is made. Any change to it makes the cached copy outdated, so it is remade.

    `revision` counts changes to the way roots are made that the other fields do not show.
    """

    name: str  # the directory under CACHE_DIR
    suite: str  # the release debootstrap installs
    archive: str  # "debian" or "ubuntu"
    packages: tuple[str, ...]
    components: tuple[str, ...] = ("main",)
    pockets: tuple[str, ...] = ()  # further suites in its apt sources, e.g. security updates
    revision: int = 1

    def fingerprint(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _pythons(*versions: str) -> tuple[str, ...]:
    """An interpreter and its venv module, for each version (`python3.X` is its command)."""
    return tuple(package for v in versions for package in (f"python{v}", f"python{v}-venv"))


# What a generated project's `make install`, `make lint` and `make test` need besides Python.
SUITE_PACKAGES = ("make", "redis-server", "git", "ca-certificates")

# Debian unstable: its python3 is 3.14, and it packages 3.13 and 3.15 beside it.
SID = Recipe("sid", "sid", "debian", (*_pythons("3.13", "3.14", "3.15"), *SUITE_PACKAGES))
# Ubuntu 24.04: Debian has no release with 3.12; this one's python3 is 3.12. redis-server is in
# universe; the release pocket is frozen, so updates come from the two others.
NOBLE = Recipe(
    "noble",
    "noble",
    "ubuntu",
    (*_pythons("3.12"), *SUITE_PACKAGES),
    components=("main", "universe"),
    pockets=("noble-updates", "noble-security"),
)
ROOT_OF_PYTHON = {"3.12": NOBLE, "3.13": SID, "3.14": SID, "3.15": SID}


@dataclass(frozen=True)
class Root:
    """A complete root file system, and the lock a command inside holds shared (None: no lock,
    for the root's own making, which already holds it exclusively)."""

    path: Path
    lock: Path | None

    def command(
        self, argv: Sequence[str], *, workdir: Path, binds: Sequence[Path] = ()
    ) -> list[str]:
        """The command line that runs `argv` inside this root, in `workdir`, with each directory
        of `binds` mounted at its own path. Run it with `environment()` as its environment.
        """
        bind_paths = sorted({str(Path(b).resolve()) for b in binds}, key=len)
        namespace = [
            _host_command("unshare"),
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _ENTER,
            "enter-root",
            str(self.path),
            str(workdir),
            str(HOST_CA_BUNDLE),
            *bind_paths,
            "--",
            *argv,
        ]
        if self.lock is None:
            return namespace
        return [_host_command("flock"), "--shared", str(self.lock), *namespace]

    def run(
        self,
        argv: Sequence[str],
        *,
        step: str,
        workdir: Path = Path("/"),
        binds: Sequence[Path] = (),
        timeout: float = APT_TIMEOUT,
        **extra_env: str,
    ) -> str:
        """Run a command inside and return what it printed; raise `CommandFailed` if it fails."""
        return _run(
            self.command(argv, workdir=workdir, binds=binds),
            step=step,
            timeout=timeout,
            env=environment(**extra_env),
        )


# Runs in the new mount namespace: mount, then chroot. Arguments: root, workdir, CA bundle, the
# directories to bind (parents first), "--", the command. `set -e`: a mount that fails stops it.
_ENTER = f"""\
set -eu
root=$1 workdir=$2 bundle=$3
shift 3
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
mount --bind "$bundle" "$root{ROOT_CA_BUNDLE}"
mount -o remount,bind,ro "$root{ROOT_CA_BUNDLE}"
while [ "$1" != -- ]; do
    mkdir -p "$root$1"
    mount --bind "$1" "$root$1"
    shift
done
shift
exec chroot "$root" /bin/sh -c 'cd "$1" && shift && exec "$@"' in-root "$workdir" "$@"
"""


def environment(**extra: str) -> dict[str, str]:
    """The whole environment of a command inside a root, plus `extra`."""
    env = {
        "PATH": ROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "SSL_CERT_FILE": ROOT_CA_BUNDLE,
        "PIP_CERT": ROOT_CA_BUNDLE,
        "REQUESTS_CA_BUNDLE": ROOT_CA_BUNDLE,
    }
    env.update({name: os.environ[name] for name in PASSED_THROUGH if name in os.environ})
    env.update(extra)
    return env


def ensure_root(recipe: Recipe) -> Root:
    """The root of `recipe`: the cached one when it is complete and current, else made now."""
    home = CACHE_DIR / recipe.name
    lock = CACHE_DIR / f"{recipe.name}.lock"
    _require_root_user()
    for name in ("chroot", "flock", "unshare", "mount"):
        _host_command(name)
    with _locked(lock, exclusive=False):
        if _is_complete(home, recipe):
            return Root(home / "rootfs", lock)
    with _locked(lock, exclusive=True):
        if not _is_complete(home, recipe):  # another process may have made it meanwhile
            _make(recipe, home)
    return Root(home / "rootfs", lock)


def _is_complete(home: Path, recipe: Recipe) -> bool:
    try:
        return (home / MARKER).read_text() == recipe.fingerprint()
    except OSError:
        return False


@contextlib.contextmanager
def _locked(lock: Path, *, exclusive: bool) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


def _make(recipe: Recipe, home: Path) -> None:
    """Build the root in a scratch directory, then put it in place of any older one."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{recipe.name}.making-", dir=CACHE_DIR))
    try:
        rootfs = scratch / "rootfs"
        debootstrap(recipe.suite, rootfs, archive=recipe.archive, components=recipe.components)
        prepare_for_chroot(rootfs)
        mirror = UBUNTU_MIRROR if recipe.archive == "ubuntu" else debian_mirror()
        components = " ".join(recipe.components)
        (rootfs / "etc/apt/sources.list").write_text(
            "".join(
                f"deb {mirror} {suite} {components}\n" for suite in (recipe.suite, *recipe.pockets)
            )
        )
        install = (
            "apt-get update -q && apt-get install -y -q --no-install-recommends "
            f"{' '.join(recipe.packages)} && apt-get clean"
        )
        Root(rootfs, lock=None).run(
            ["sh", "-c", install], step=f"installing packages in the {recipe.name} root"
        )
        (scratch / MARKER).write_text(recipe.fingerprint())
        if home.exists():
            remove_tree(home.rename(scratch.with_name(f"{scratch.name}-outdated")))
        scratch.rename(home)
    finally:
        if scratch.exists():
            remove_tree(scratch)


def debootstrap(
    suite: str, target: Path, *, archive: str = "debian", components: Sequence[str] = ("main",)
) -> None:
    """Write a minimal (minbase) root file system of a Debian or Ubuntu release into `target`.

    Debian's releases come from this machine's Debian mirror, checked with its Debian keys;
    Ubuntu's from `UBUNTU_MIRROR`, checked with Ubuntu's keys (see `ubuntu_keyring`).
    """
    _require_root_user()
    command = [
        _host_command("debootstrap"),
        "--variant=minbase",
        f"--components={','.join(components)}",
    ]
    if archive == "ubuntu":
        keyring = ubuntu_keyring()
        command += [f"--keyring={keyring}", suite, str(target), UBUNTU_MIRROR, str(UBUNTU_SCRIPT)]
    else:
        command += [f"--keyring={DEBIAN_KEYRING}", suite, str(target), debian_mirror()]
    _run(command, step=f"making a {suite} root file system", timeout=DEBOOTSTRAP_TIMEOUT)


def prepare_for_chroot(rootfs: Path) -> None:
    """Ready a fresh root for apt inside: no services started, this machine's apt settings for
    reaching its archives, and a regular file for each file mount `Root.command` makes.
    """
    forbid_service_starts(rootfs)
    follow_host_apt_settings(rootfs)
    for name in ("etc/resolv.conf", ROOT_CA_BUNDLE.lstrip("/")):
        path = rootfs / name
        if path.is_symlink() or not path.is_file():
            path.unlink(missing_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")


def forbid_service_starts(rootfs: Path) -> None:
    """Tell package scripts never to start services (as Debian's own images do)."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# Services are never started while packages install.\nexit 101\n")
    policy.chmod(0o755)


def follow_host_apt_settings(rootfs: Path) -> None:
    """Give apt inside the root this machine's settings of `HOST_APT_SETTINGS`, if it has any.

    A machine whose archive is a frozen mirror turns off apt's expiry check for it (an expired
    sid index is refused otherwise); apt inside then needs the same, and nothing more.
    """
    apt_config = shutil.which("apt-config")
    if apt_config is None:
        return
    dump = _run([apt_config, "dump"], step="reading apt's settings", timeout=APT_TIMEOUT)
    lines = [line for line in dump.splitlines() if line.split(" ", 1)[0] in HOST_APT_SETTINGS]
    if lines:
        target = rootfs / "etc/apt/apt.conf.d/99host-settings"
        header = "// This machine's own apt settings for reaching its archives.\n"
        target.write_text(header + "\n".join(lines) + "\n")


def ubuntu_keyring() -> Path:
    """Ubuntu's archive keyring, taken from Debian's own `ubuntu-keyring` package (in sid).

    Bookworm does not package it. Fetched through Debian's signed sid index (`debian_file`), so
    Ubuntu's archive is verified without trusting keys downloaded over plain HTTP.
    """
    return debian_file("ubuntu-keyring", "sid", "usr/share/keyrings/ubuntu-archive-keyring.gpg")


def debian_file(package: str, suite: str, member: str) -> Path:
    """One file of a Debian package from `suite`, kept in CACHE_DIR (by its base name) once fetched.

    apt downloads the package with a private sources list, package lists and cache, through the
    suite's signed index, checked against this machine's Debian keys; nothing is installed and
    the machine's own apt state is untouched. The file keeps its permission bits.
    """
    kept = CACHE_DIR / Path(member).name
    if kept.is_file():
        return kept
    apt_get = _host_command("apt-get")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{package}-", dir=CACHE_DIR) as scratch:
        work = Path(scratch)
        for directory in ("lists/partial", "cache/archives/partial", "deb"):
            (work / directory).mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={DEBIAN_KEYRING}] {debian_mirror()} {suite} main\n")
        private = [
            *("-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-"),
            *("-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}"),
        ]
        step = f"fetching Debian {suite}'s {package} package"
        _run([apt_get, *private, "update", "-q"], step=step, timeout=APT_TIMEOUT)
        _run(
            [apt_get, *private, "download", package],
            step=step,
            timeout=APT_TIMEOUT,
            cwd=work / "deb",
        )
        (downloaded,) = (work / "deb").glob(f"{package}_*.deb")
        _run(
            [_host_command("dpkg-deb"), "-x", str(downloaded), str(work / "x")],
            step=step,
            timeout=APT_TIMEOUT,
        )
        partial = kept.with_suffix(".partial")
        shutil.copy(work / "x" / member, partial)
        partial.rename(kept)
    return kept


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses, or Debian's own default one.

    The first source that serves Debian itself (not its security archive) is taken; one mirror
    serves every Debian release.
    """
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        text = commands.read_text(path)
        one_line = re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s", text, flags=re.MULTILINE)
        deb822 = re.findall(r"^URIs:\s*(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
        for uri in (*one_line, *deb822):
            if re.search(r"/debian/?$", uri):
                return uri.rstrip("/")
    return DEFAULT_DEBIAN_MIRROR


def remove_tree(path: Path) -> None:
    """Delete a directory, first undoing any mounts a failed debootstrap may have left in it.

    If a mount will not come off, the directory is left in place rather than deleting through
    the mount into the files it shows (debootstrap mounts the machine's /proc and /sys).
    """
    for mount_point in _mounts_below(path):
        subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
    if not _mounts_below(path):
        shutil.rmtree(path, ignore_errors=True)


def _mounts_below(path: Path) -> list[str]:
    """Mount points inside a directory, deepest first."""
    prefix = f"{path.resolve()}/"
    points = [
        re.sub(r"\\([0-7]{3})", lambda code: chr(int(code[1], 8)), line.split()[1])
        for line in commands.read_text(Path("/proc/self/mounts")).splitlines()
        if len(line.split()) > 1
    ]
    return sorted((point for point in points if point.startswith(prefix)), key=len, reverse=True)


# This machine


def _require_root_user() -> None:
    if os.geteuid() != 0:
        raise RootUnavailable(
            "making and entering root file systems needs root (debootstrap, mount, chroot)"
        )


def _host_command(name: str) -> str:
    """The full path of a command this module runs; debootstrap is installed with apt if missing."""
    found = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if found is None and name == "debootstrap":
        _apt_install("debootstrap")
        found = shutil.which(name) or shutil.which(name, path=_SBIN_PATH)
    if found is None:
        package = _HOST_COMMANDS.get(name, name)
        raise RootUnavailable(f"no {name} on PATH (Debian package {package})")
    return found


def _apt_install(package: str) -> None:
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        raise RootUnavailable(f"no {package} on PATH, and not root with apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([apt_get, "update", "-q"], step="refreshing apt's lists", timeout=APT_TIMEOUT, env=env)
    _run(
        [apt_get, "install", "-y", "-q", package],
        step=f"installing {package}",
        timeout=APT_TIMEOUT,
        env=env,
    )
