"""Updating a project with cruft: the template's changes arrive, secrets and local state stay.

A team creates its project with `cruft create` from a git repository of the template, commits it
and edits it; then the template changes. `cruft check`, `cruft diff` and `cruft update` must show
and apply exactly that change. Every render of the template makes new secrets (the post-gen hook
writes `.env` and `keys/`), so `.env`, `keys/` and `data/` must never reach a diff, a prompt or a
`.rej` file. The suite of a project updated this way runs in test_generated_suites.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .baking import (
    TOOLS_DIR,
    change_template,
    commit_all,
    cruft,
    cruft_create,
    git_environment,
    run,
    template_repository,
)

LOCAL_STATE = (".env", "keys", "data")
DIFF_HEADER = re.compile(r"^diff --git [^/]+/(\S+) [^/]+/(\S+)$", re.MULTILINE)
TEAM_LINE = "Our team's own note, kept through template updates.\n"
PACKAGE = "auth_service"


def local_state(project: Path) -> dict[str, bytes]:
    """Every file under `.env`, `keys/` and `data/`, byte for byte."""
    files = {}
    for name in LOCAL_STATE:
        root = project / name
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file():
                files[str(path.relative_to(project))] = path.read_bytes()
    return files


def secrets_of(project: Path) -> list[str]:
    """The secret values of `.env` and the lines of a private key, as they would be printed."""
    found = [
        line.partition("=")[2]
        for line in (project / ".env").read_text().splitlines()
        if re.match(r"\w*(SECRET|PASSWORD)=", line)
    ]
    private_key = project / "keys" / "jwt-private.pem"
    if private_key.exists():
        found += [line for line in private_key.read_text().splitlines() if "-----" not in line]
    assert found
    return found


def changed_paths(diff: str) -> set[str]:
    return {path for paths in DIFF_HEADER.findall(diff) for path in paths}


def git_status(project: Path) -> set[str]:
    """Paths git sees as changed or new, ignored ones (`.env`, `keys/`, `data/`) aside."""
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project).stdout
    return {line[3:] for line in status.splitlines()}


def cruft_check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS_DIR / "cruft"), "check"],
        cwd=project,
        env=git_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_cruft_update_applies_the_template_change_and_nothing_else(
    tmp_path: Path, algorithm: str
) -> None:
    template = template_repository(tmp_path / "template")
    project = cruft_create(template, tmp_path / "project", jwt_algorithm=algorithm)
    (project / "data").mkdir()  # what create-user leaves behind
    (project / "data" / "users.json").write_text('{"users": {}}\n')
    title, rest = (project / "README.md").read_text().split("\n", 1)  # the template adds at the end
    (project / "README.md").write_text(f"{title}\n\n{TEAM_LINE}{rest}")
    commit_all(project, "The team's own edit")
    state, secrets = local_state(project), secrets_of(project)
    assert cruft_check(project).returncode == 0

    added = change_template(template, PACKAGE)
    check = cruft_check(project)
    local_diff = cruft("diff", cwd=project).stdout  # what the project changed since its commit
    update_diff = cruft("diff", "--checkout", "main", cwd=project).stdout  # what an update brings
    update = cruft("update", "--skip-apply-ask", cwd=project)
    # First, and without showing them: no secret was printed by any of these commands.
    printed = check.stdout + local_diff + update_diff + update.stdout + update.stderr
    leaked = sum(secret in printed for secret in secrets)
    assert not leaked, f"cruft printed {leaked} of the project's secrets"

    assert check.returncode != 0
    assert "out of date" in check.stdout
    assert changed_paths(local_diff) == {"README.md"}  # the team's edit only
    assert TEAM_LINE.strip() in local_diff
    assert changed_paths(update_diff) == set(added)  # the template's change only
    assert all(line.strip() in update_diff for line in added.values())

    assert "Good work!" in update.stdout, update.stdout + update.stderr
    assert not [path.name for path in project.rglob("*.rej")]
    now = local_state(project)
    assert not [name for name in state.keys() | now.keys() if state.get(name) != now.get(name)]
    assert git_status(project) == {".cruft.json", *added}
    for path, line in added.items():
        assert (project / path).read_text().endswith(line)
    assert TEAM_LINE in (project / "README.md").read_text()
    commit_all(project, "Updated from the template")
    assert cruft_check(project).returncode == 0
