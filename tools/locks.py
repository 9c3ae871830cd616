"""The generated project's locks: one `uv.lock` per `python_version`, kept in the template.

    python -m tools.locks              # bring each lock up to date, keeping every version it can
    python -m tools.locks --upgrade    # move each to the newest releases pyproject.toml allows

A bake takes the lock of its `python_version` (hooks/post_gen_project.py puts the project's
name into it): the locks differ by `requires-python`, which decides which releases a lock may
hold. Each is made by `uv lock` on a project rendered without hooks under `PLACEHOLDER_SLUG`,
starting from the lock kept so far. uv locks a project only on an interpreter that project
allows, so a version other than the one running this is locked inside the root file system that
has it (`tools.roots`), with this virtualenv's uv and uv's download cache mounted in.
`make lock` at the template's root runs this after relocking the template's own tools.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

from . import roots

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
LOCKS_DIR = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "locks"
PLACEHOLDER_SLUG = "template-lock-placeholder"  # the name the post-gen hook replaces
UV = Path(sys.executable).parent / "uv"  # the template's own, as its uv.lock pins it
UV_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"


def python_versions() -> list[str]:
    answers = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    versions: list[str] = answers["python_version"]
    return versions


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def render(python_version: str, into: Path) -> Path:
    """The generated project for `python_version`, without hooks: no secrets, no lock chosen."""
    project = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        accept_hooks=False,
        output_dir=str(into),
        extra_context={"project_slug": PLACEHOLDER_SLUG, "python_version": python_version},
    )
    return Path(project)


def lock(python_version: str, *, upgrade: bool) -> None:
    """Make `LOCKS_DIR/uv-<python_version>.lock` current (and, with `upgrade`, newest)."""
    kept = LOCKS_DIR / f"uv-{python_version}.lock"
    with tempfile.TemporaryDirectory(prefix="template-lock-") as scratch:
        project = render(python_version, Path(scratch))
        if kept.exists():
            shutil.copyfile(kept, project / "uv.lock")
        argv = [str(UV), "lock", "--python", f"python{python_version}", "--no-python-downloads"]
        argv += ["--upgrade"] if upgrade else []
        if python_version == this_python():
            env = {**os.environ, "UV_CACHE_DIR": str(UV_CACHE)}
            subprocess.run([*argv[:3], sys.executable, *argv[4:]], cwd=project, env=env, check=True)
        else:
            UV_CACHE.mkdir(parents=True, exist_ok=True)
            root = roots.ensure_root(roots.ROOT_OF_PYTHON[python_version])
            print(
                root.run(
                    argv,
                    step=f"uv lock for Python {python_version}",
                    workdir=project,
                    binds=[project, UV.parent, UV_CACHE],
                    UV_CACHE_DIR=str(UV_CACHE),
                ),
                end="",
            )
        shutil.copyfile(project / "uv.lock", kept)
    print(f"{kept.relative_to(TEMPLATE_DIR)}: current for Python {python_version}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="take the newest releases")
    arguments = parser.parse_args()
    LOCKS_DIR.mkdir(exist_ok=True)
    for python_version in python_versions():
        lock(python_version, upgrade=arguments.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
