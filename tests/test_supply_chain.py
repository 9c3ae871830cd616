"""The generated project's supply chain: pinned tools, and a GitHub CI that zizmor finds clean.

zizmor (a static analyser for GitHub Actions) runs offline here: its online audits, which ask
GitHub about tags and advisories, are off, and the offline ones cover pinning, persisted
credentials and permissions.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .baking import TOOLS_DIR, bake, clean_environment

# `uses: owner/repo@<full commit> # vX.Y.Z`: the commit is what runs, the comment is for people
# and for Dependabot, which updates both together.
PINNED_USES = re.compile(r"^\s*-?\s*uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


@pytest.fixture(scope="module")
def github_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("github"), ci="github")


def zizmor_findings(directory: Path) -> list[dict[str, Any]]:
    """zizmor's findings of medium severity or more, with no ignore comment or config honoured."""
    result = subprocess.run(
        [
            TOOLS_DIR / "zizmor",
            "--offline",
            "--no-config",
            "--no-ignores",
            "--min-severity=medium",
            "--format=json",
            directory,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Exit 0: nothing found; 10 and up: findings (the code grows with the worst severity);
    # anything else is zizmor failing to run, which must not pass as "no findings".
    assert result.returncode == 0 or result.returncode >= 10, result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def test_zizmor_finds_nothing_of_medium_or_high_severity(github_project: Path) -> None:
    findings = zizmor_findings(github_project / ".github")
    summary = [
        f"{finding['ident']} ({finding['determinations']['severity']}): "
        f"{finding['locations'][0]['concrete']['feature']}"
        for finding in findings
    ]
    assert summary == []


def test_every_action_is_pinned_by_commit_with_its_release_named(github_project: Path) -> None:
    workflows = sorted((github_project / ".github" / "workflows").glob("*.y*ml"))
    assert workflows
    uses_lines = [
        line
        for workflow in workflows
        for line in workflow.read_text().splitlines()
        if re.match(r"^\s*-?\s*uses:", line)
    ]
    assert uses_lines
    assert [line for line in uses_lines if not PINNED_USES.match(line)] == []


def test_workflows_only_read_the_repository_and_keep_no_credentials(github_project: Path) -> None:
    for path in (github_project / ".github" / "workflows").glob("*.y*ml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for name, job in workflow["jobs"].items():
            assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}, name
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, name


def test_dependabot_watches_packages_actions_and_images(github_project: Path) -> None:
    config = yaml.safe_load((github_project / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    updates = {entry["package-ecosystem"]: entry for entry in config["updates"]}
    assert {"uv", "github-actions", "docker"} <= set(updates)
    assert "pip" not in updates  # it would edit pyproject.toml and leave uv.lock behind
    # Each ecosystem's directory holds what it updates.
    manifests = {
        "uv": "uv.lock",
        "github-actions": ".github/workflows/ci.yml",
        "docker": "Dockerfile",
        "docker-compose": "compose.yaml",
    }
    for ecosystem, entry in updates.items():
        directory = github_project / entry["directory"].lstrip("/")
        assert (directory / manifests[ecosystem]).is_file(), ecosystem
        assert entry["schedule"]["interval"] in {"daily", "weekly", "monthly"}
        assert entry["cooldown"]["default-days"] >= 7, ecosystem


def test_ruff_is_pinned_to_the_version_of_the_commit_hook(github_project: Path) -> None:
    """A floating ruff drifts from the hook's pin with every ruff release; an exact pin cannot.

    The generated suite's tests/test_tooling.py then checks the pin against the installed ruff.
    """
    pyproject = tomllib.loads((github_project / "pyproject.toml").read_text())
    pins = [
        requirement
        for requirement in pyproject["project"]["optional-dependencies"]["dev"]
        if re.match(r"ruff\b", requirement)
    ]
    assert len(pins) == 1
    assert pins[0].startswith("ruff==")
    hooks = yaml.safe_load((github_project / ".pre-commit-config.yaml").read_text())
    (ruff_hook,) = [repo for repo in hooks["repos"] if repo["repo"].endswith("/ruff-pre-commit")]
    assert ruff_hook["rev"] == "v" + pins[0].removeprefix("ruff==")


@pytest.mark.slow
def test_make_audit_never_passes_having_audited_nothing(
    github_project: Path, bake_venv: Path
) -> None:
    """Where PyPI's advisories cannot be read for a package, `make audit` fails and names it.

    Whether this machine reaches pypi.org decides which way it goes; either is fine, but a
    pass that skipped packages ("could not be audited") is not.
    """
    result = subprocess.run(
        ["make", "audit", f"VENV={bake_venv}"],
        cwd=github_project,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode == 0:
        assert "could not be audited" not in output, output
        assert "No known vulnerabilities found" in output, output
