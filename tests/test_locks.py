"""Every bake ships a `uv.lock` that is current for its `pyproject.toml`, serves every machine the
project claims, and is what `make install` installs, exactly.

The template keeps one lock per `python_version` (`{{cookiecutter.project_slug}}/locks/`,
written by `make lock` at the template's root); the post-gen hook keeps the bake's and puts the
project's name into it. The template's own test tools have a lock too (`uv.lock` at the root).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tools import roots

from .baking import (
    HOST_PYTHON,
    PROJECT_TEMPLATE,
    TEMPLATE_DIR,
    TOOLS_DIR,
    bake,
    clean_environment,
    run,
)
from .locks import (
    DISTRIBUTIONS_SCRIPT,
    MARKER_ENVIRONMENT_SCRIPT,
    PLATFORMS,
    Platform,
    exported,
    installed_set,
    without_a_wheel,
)

PYTHON_VERSIONS: list[str] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())[
    "python_version"
]
LOCKS = TEMPLATE_DIR / PROJECT_TEMPLATE / "locks"
# What `python -m venv` seeds besides pip (which the lock has, for pip-audit): setuptools, up to
# Python 3.11. uv leaves seed packages alone; the service does not use it.
SEED_PACKAGES = {"setuptools"}
STALE = "needs to be updated, but `--locked` was provided"


def lock_of(project: Path) -> dict[str, object]:
    with (project / "uv.lock").open("rb") as file:
        return tomllib.load(file)


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_each_bake_has_the_lock_of_its_python_under_its_own_name(
    tmp_path: Path, python_version: str
) -> None:
    project = bake(tmp_path, python_version=python_version, project_name="Zebra Billing")
    lock = lock_of(project)
    assert lock["requires-python"] == f">={python_version}"
    names = [package["name"] for package in lock["package"]]  # type: ignore[index, union-attr]
    assert "zebra-billing" in names
    assert "template-lock-placeholder" not in names
    assert not (project / "locks").exists()


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_each_bakes_lock_is_current(tmp_path: Path, python_version: str) -> None:
    """`uv lock --check`: the lock satisfies the bake's pyproject.toml as rendered, for a name
    other than the template's. uv checks a lock only on an interpreter the project allows: this
    one, or the root file system that has that version (the same roots the suites run in)."""
    project = bake(tmp_path, python_version=python_version, project_name="Zebra Billing")
    check = [str(TOOLS_DIR / "uv"), "lock", "--check", "--no-python-downloads"]
    check += ["--python", f"python{python_version}"]
    if python_version == HOST_PYTHON:
        run([*check[:-1], sys.executable], cwd=project, env=clean_environment())
        return
    root = root_with(python_version)
    try:
        root.run(check, step="uv lock --check", workdir=project, binds=[project, TOOLS_DIR])
    except roots.CommandFailed as failure:
        pytest.fail(str(failure), pytrace=False)


def root_with(python_version: str) -> roots.Root:
    """The root file system that has `python_version`; unavailable: a skip, but under CI=true
    (where every offered version must be proven) a failure."""
    try:
        return roots.ensure_root(roots.ROOT_OF_PYTHON[python_version])
    except roots.RootUnavailable as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Python {python_version}: {missing}", pytrace=False)
        pytest.skip(f"Python {python_version}: {missing}")


def test_the_lock_of_the_templates_own_test_tools_is_current() -> None:
    run(
        [TOOLS_DIR / "uv", "lock", "--check", "--offline"],
        cwd=TEMPLATE_DIR,
        env=clean_environment(),
    )


@pytest.mark.parametrize("platform", PLATFORMS, ids=[platform.name for platform in PLATFORMS])
@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_every_locked_package_installs_from_a_wheel(
    tmp_path: Path, python_version: str, platform: Platform
) -> None:
    """For every Python the bake allows and every machine the README names, each runtime and
    dev package the lock installs there has a wheel for it: nothing needs a compiler."""
    project = bake(tmp_path, python_version=python_version)
    assert list(without_a_wheel(project, python_version, platform)) == []


def test_make_install_gives_a_new_virtualenv_exactly_the_lock(tmp_path: Path) -> None:
    """A fresh `make install`, as the README says, on a machine with only Python: the virtualenv
    then holds the lock's runtime, dev and otel (tracing) packages at the lock's versions, the
    service itself, and nothing else (but the pip that bootstrapped uv)."""
    project = bake(tmp_path / "bake", python_version=HOST_PYTHON)
    venv = tmp_path / "venv"
    run(["make", "install", f"VENV={venv}"], cwd=project, env=clean_environment())
    python = venv / "bin" / "python"
    markers = json.loads(run([python, "-c", MARKER_ENVIRONMENT_SCRIPT], cwd=project).stdout)
    installed = json.loads(run([python, "-c", DISTRIBUTIONS_SCRIPT], cwd=project).stdout)
    expected = installed_set(exported(project, "--extra", "dev", "--extra", "otel"), markers)
    expected[project.name] = "0.1.0"
    normalized = {canonicalize_name(name): version for name, version in installed.items()}
    for seed in SEED_PACKAGES:
        normalized.pop(seed, None)
    assert normalized == expected


def test_a_dependency_edited_without_relocking_stops_make_install(tmp_path: Path) -> None:
    """pyproject.toml asks for a package the lock does not have: `make install` refuses, with
    uv's own words, and installs nothing."""
    project = bake(tmp_path / "bake", python_version=HOST_PYTHON)
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "six>=1.16",\n'))
    venv = tmp_path / "venv"
    result = run(
        ["make", "install", f"VENV={venv}"],
        cwd=project,
        env=clean_environment(),
        check=False,
    )
    assert result.returncode != 0
    assert STALE in result.stdout + result.stderr, result.stderr
    assert not list(venv.glob("lib/python3*/site-packages/fastapi"))
