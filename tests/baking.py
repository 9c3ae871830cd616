"""Bake the template with real cookiecutter and run tools on the result."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
BAKE_VENV = TEMPLATE_DIR / ".venv-bake"  # the generated projects' dependencies, reused across runs
TOOLS_DIR = Path(sys.executable).parent  # this virtualenv's bin/: cookiecutter, cruft, hadolint
# The python_version of every bake whose code runs on this machine's Python (in BAKE_VENV): a
# bake for a newer Python requires that Python, and pip refuses to install it here. The other
# versions are proven in tests/test_generated_suites.py, on interpreters of their own.
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PROJECT_TEMPLATE = "{{cookiecutter.project_slug}}"
# What cruft needs of the template: the answers, the hooks and the project tree.
TEMPLATE_PARTS = ("cookiecutter.json", "hooks", PROJECT_TEMPLATE)
# Lines a template change adds (see `change_template`): a comment in the package and a README line.
TEMPLATE_CHANGE = {
    "src/{package}/__init__.py": "# Added to the template after this project was created.\n",
    "README.md": "\nA line added to the template after this project was created.\n",
}


def bake(output_dir: Path, **answers: Any) -> Path:
    """Bake the template with real cookiecutter, offline and without prompts; return the project."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        extra_context={key: str(value) for key, value in answers.items()},
        output_dir=str(output_dir),
    )
    return Path(project)


def run(
    command: Sequence[str | os.PathLike[str]],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (unless `check` is false), fail the test with everything it
    printed."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode} in {cwd}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without APP_* or REDIS_URL, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("APP_")
        and name not in {"REDIS_URL", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}
    }
    env.update(extra)
    return env


def load_generated_module(project: Path, relative_path: str, name: str) -> ModuleType:
    """Import one plain module of a baked project (e.g. its throwaway-Redis helper)."""
    spec = importlib.util.spec_from_file_location(name, project / relative_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_into(venv: Path, project: Path) -> None:
    """Make `venv` import this bake's package ahead of any other bake's (its dependencies are
    already there): a `.pth` file that puts the bake's `src` first on the path, as an editable
    install would, whatever the bake's `requires-python` (bakes ask for newer Pythons than the
    one running these tests; the code runs on it all the same).

    Its name sorts before the one `uv sync` writes for the virtualenv's own project, so it wins;
    each call replaces the last."""
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    (site_packages / "_00_template_bake.pth").write_text(f"{project / 'src'}\n", encoding="utf-8")


# Creating and updating with cruft, from a git repository of the template, as a team would.


def git_environment() -> dict[str, str]:
    """Git without the machine's own configuration (signing, hooks, default branch), with a name."""
    return clean_environment(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Template Tests",
        GIT_AUTHOR_EMAIL="tests@example.com",
        GIT_COMMITTER_NAME="Template Tests",
        GIT_COMMITTER_EMAIL="tests@example.com",
    )


def commit_all(repository: Path, message: str) -> None:
    run(["git", "add", "--all"], cwd=repository, env=git_environment())
    run(["git", "commit", "--quiet", "--message", message], cwd=repository, env=git_environment())


def template_repository(destination: Path) -> Path:
    """A git repository of this template's files at one commit (including uncommitted edits)."""
    listed = run(
        [
            "git",
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *TEMPLATE_PARTS,
        ],
        cwd=TEMPLATE_DIR,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE_DIR / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    run(
        ["git", "init", "--quiet", "--initial-branch", "main"],
        cwd=destination,
        env=git_environment(),
    )
    commit_all(destination, "The template as it is")
    return destination


def cruft(*arguments: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the cruft command line; fails the test when it exits non-zero."""
    return run([TOOLS_DIR / "cruft", *arguments], cwd=cwd, env=git_environment())


def cruft_create(template: Path, output_dir: Path, **answers: str) -> Path:
    """`cruft create` without prompts, then the project's first commit; returns the project."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cruft(
        "create",
        "--no-input",
        "--output-dir",
        output_dir,
        "--extra-context",
        json.dumps(answers),
        template,
        cwd=output_dir,
    )
    (project,) = output_dir.iterdir()
    run(["git", "init", "--quiet"], cwd=project, env=git_environment())
    commit_all(project, "Created from the template")
    return project


def change_template(template: Path, package_name: str) -> dict[str, str]:
    """Commit `TEMPLATE_CHANGE` to the template; returns the added text by generated path."""
    added = {}
    for generated, line in TEMPLATE_CHANGE.items():
        source = (
            template / PROJECT_TEMPLATE / generated.format(package="{{cookiecutter.package_name}}")
        )
        with source.open("a", encoding="utf-8") as file:
            file.write(line)
        added[generated.format(package=package_name)] = line
    commit_all(template, "A change to the template")
    return added


def bake_updated_with_cruft(output_dir: Path, **answers: str) -> Path:
    """A project made by `cruft create`, then brought up to a later template by `cruft update`."""
    template = template_repository(output_dir / "template")
    project = cruft_create(template, output_dir / "project", **answers)
    package_name = json.loads((project / ".cookiecutter.json").read_text())["package_name"]
    added = change_template(template, package_name)
    cruft("update", "--skip-apply-ask", cwd=project)
    assert not list(project.rglob("*.rej")), "cruft update left rejected hunks"
    for path, line in added.items():
        assert (project / path).read_text(encoding="utf-8").endswith(line), f"{path} not updated"
    commit_all(project, "Updated from the template")
    return project
