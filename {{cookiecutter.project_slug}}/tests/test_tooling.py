"""The project's own tools agree with each other."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "scripts"))
from uv_requirement import uv_requirement  # noqa: E402  (a script, not a package)


def test_the_commit_hook_runs_the_ruff_that_make_lint_runs() -> None:
    """A commit hook on another ruff would pass code that `make lint` fails, or the reverse."""
    config = (PROJECT / ".pre-commit-config.yaml").read_text()
    hook = re.search(r"repo: https://github\.com/astral-sh/ruff-pre-commit\s+rev: v(\S+)", config)
    assert hook is not None, "no ruff-pre-commit hook in .pre-commit-config.yaml"
    assert hook[1] == version("ruff"), (
        "bump ruff in pyproject.toml and rev in .pre-commit-config.yaml together"
    )


def locked(name: str) -> dict[str, Any]:
    with (PROJECT / "uv.lock").open("rb") as file:
        packages: list[dict[str, Any]] = tomllib.load(file)["package"]
    return next(package for package in packages if package["name"] == name)


def test_uv_is_bootstrapped_at_the_locked_version_with_every_hash() -> None:
    """`make install` and the Dockerfile install uv from this line before anything else: the
    lock's version, and a hash for each of its files, so pip refuses any other file (and the
    wheels for Linux x86_64 and aarch64 and for macOS are among them)."""
    uv = locked("uv")
    line = uv_requirement(PROJECT / "uv.lock")
    requirement, *hashes = line.split()
    assert requirement == f"uv=={uv['version']}"
    assert len(hashes) == len(uv["wheels"]) + ("sdist" in uv)
    assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", option) for option in hashes)
    wheels = " ".join(wheel["url"] for wheel in uv["wheels"])
    for platform in ("manylinux_2_17_x86_64", "manylinux_2_17_aarch64", "macosx_11_0_arm64"):
        assert platform in wheels, platform


def test_uv_builds_this_project_itself() -> None:
    """uv builds the project with its own backend, downloading nothing, only when the backend's
    range in pyproject.toml includes the uv the lock pins; past it, uv would fetch the backend."""
    with (PROJECT / "pyproject.toml").open("rb") as file:
        build = tomllib.load(file)["build-system"]
    assert build["build-backend"] == "uv_build"
    (requirement,) = (Requirement(text) for text in build["requires"])
    assert requirement.name == "uv_build"
    assert requirement.specifier.contains(locked("uv")["version"]), (
        "make upgrade moved uv past the uv_build range in pyproject.toml: raise the range with it"
    )
