"""Bake the template with real cookiecutter and run tools on the result."""

from __future__ import annotations

import importlib.util
import os
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
TOOLS_DIR = Path(sys.executable).parent  # this virtualenv's bin/: cookiecutter, hadolint


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
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with everything it printed."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
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
        if not name.startswith("APP_") and name not in {"REDIS_URL", "VIRTUAL_ENV"}
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
    """Make `venv` import this bake's package (its dependencies are already there)."""
    run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "-e", project],
        cwd=project,
        env=clean_environment(),
    )
