"""The project's own tools agree with each other."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_the_commit_hook_runs_the_ruff_that_make_lint_runs() -> None:
    """A commit hook on another ruff would pass code that `make lint` fails, or the reverse."""
    config = (PROJECT / ".pre-commit-config.yaml").read_text()
    hook = re.search(r"repo: https://github\.com/astral-sh/ruff-pre-commit\s+rev: v(\S+)", config)
    assert hook is not None, "no ruff-pre-commit hook in .pre-commit-config.yaml"
    assert hook[1] == version("ruff"), (
        "bump ruff in pyproject.toml and rev in .pre-commit-config.yaml together"
    )
