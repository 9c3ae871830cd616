"""What a bake's `uv.lock` promises, read with uv and `packaging`: the packages an environment
gets from it, and whether each of them has a file that installs there without a compiler."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

from .baking import TOOLS_DIR, clean_environment, run

# The glibc versions a manylinux wheel may target on a machine with glibc 2.36 (Debian 12, the
# oldest of the systems this project's images and CI run on): 2.17 (manylinux2014) to 2.36.
MANYLINUX_GLIBC_MINORS = range(36, 16, -1)


@dataclass(frozen=True)
class Platform:
    """A kind of machine the lock must serve: its markers' values and its wheel platform tags."""

    name: str
    sys_platform: str
    platform_machine: str
    wheel_platforms: tuple[str, ...]

    def markers(self, python_version: str) -> dict[str, str]:
        """`packaging`'s marker environment for this machine and Python `X.Y`."""
        return {
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "platform_system": {"linux": "Linux", "darwin": "Darwin"}[self.sys_platform],
            "sys_platform": self.sys_platform,
            "platform_machine": self.platform_machine,
            "os_name": "posix",
            "python_version": python_version,
            "python_full_version": f"{python_version}.0",
            "implementation_version": f"{python_version}.0",
            "platform_release": "",
            "platform_version": "",
        }

    def tags(self, python_version: str) -> set[Tag]:
        version = tuple(int(part) for part in python_version.split("."))
        platforms = list(self.wheel_platforms)
        return {
            *cpython_tags(version, platforms=platforms),
            *compatible_tags(version, f"cp{version[0]}{version[1]}", platforms=platforms),
        }


def _manylinux(machine: str) -> tuple[str, ...]:
    return (
        *(f"manylinux_2_{minor}_{machine}" for minor in MANYLINUX_GLIBC_MINORS),
        f"manylinux2014_{machine}",
        f"linux_{machine}",
    )


# Intel Macs are not among them: cryptography (50) and argon2-cffi-bindings (26.2) publish no
# macOS x86_64 wheels any more, so there they would have to be compiled.
PLATFORMS = (
    Platform("Linux x86_64", "linux", "x86_64", _manylinux("x86_64")),
    Platform("Linux aarch64", "linux", "aarch64", _manylinux("aarch64")),
    Platform("macOS arm64", "darwin", "arm64", tuple(mac_platforms((14, 0), "arm64"))),
)


def exported(project: Path, *options: str) -> list[Requirement]:
    """The lock's packages as `uv export` lists them (pinned, with their markers), without the
    project itself; `options` choose extras (`--extra dev`) or groups."""
    result = run(
        [
            TOOLS_DIR / "uv",
            "export",
            "--frozen",
            "--no-emit-project",
            "--no-hashes",
            "--no-header",
            "--no-annotate",
            "--quiet",
            *options,
        ],
        cwd=project,
        env=clean_environment(),
    )
    return [Requirement(line) for line in result.stdout.splitlines() if line.strip()]


def installed_set(requirements: list[Requirement], markers: Mapping[str, str]) -> dict[str, str]:
    """name: version of the packages an environment with `markers` installs from the lock."""
    chosen = {}
    for requirement in requirements:
        if requirement.marker is None or requirement.marker.evaluate(dict(markers)):
            (specifier,) = requirement.specifier
            chosen[canonicalize_name(requirement.name)] = specifier.version
    return chosen


def locked_files(lock: Path) -> dict[tuple[str, str], tuple[list[str], bool]]:
    """(name, version): (wheel file names, whether there is an sdist) for each locked package."""
    with lock.open("rb") as file:
        packages = tomllib.load(file)["package"]
    return {
        (canonicalize_name(package["name"]), package["version"]): (
            [wheel["url"].rpartition("/")[2] for wheel in package.get("wheels", [])],
            "sdist" in package,
        )
        for package in packages
        if "version" in package
    }


def without_a_wheel(project: Path, python_version: str, platform: Platform) -> Iterator[str]:
    """The runtime, dev and otel packages this platform and Python get from the lock that have
    no wheel it can install: each would need a compiler (or fail) on such a machine."""
    tags = platform.tags(python_version)
    files = locked_files(project / "uv.lock")
    extras = exported(project, "--extra", "dev", "--extra", "otel")
    chosen = installed_set(extras, platform.markers(python_version))
    for name, version in sorted(chosen.items()):
        wheels, _ = files[(name, version)]
        if not any(tags & parse_wheel_filename(wheel)[3] for wheel in wheels):
            yield f"{name}=={version}"


# Prints an interpreter's marker environment (PEP 508) with the standard library alone, so it runs
# in any Python, an image's included.
MARKER_ENVIRONMENT_SCRIPT = """
import json, os, platform, sys
version = ".".join(platform.python_version_tuple()[:2])
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": version,
    "sys_platform": sys.platform,
}))
"""

# Prints name: version of every distribution an interpreter can import from.
DISTRIBUTIONS_SCRIPT = """
import json
from importlib.metadata import distributions
print(json.dumps({d.metadata["Name"]: d.version for d in distributions()}))
"""
