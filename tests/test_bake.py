"""Baking: every supported combination generates a clean project; bad answers stop the bake."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from .baking import TEMPLATE_DIR, TOOLS_DIR, bake, clean_environment, run

# Each option value appears at least once; the ids read like the answers that produced them.
SUPPORTED = [
    {},
    {"jwt_algorithm": "RS256"},
    {"jwt_algorithm": "ES256", "ci": "gitlab", "license": "Apache-2.0"},
    {"python_version": "3.15", "jwt_algorithm": "RS256", "ci": "gitlab"},
    {"python_version": "3.12", "ci": "none", "license": "Proprietary"},
    {"python_version": "3.13", "jwt_algorithm": "RS256", "ci": "gitlab"},
    {"python_version": "3.11", "jwt_algorithm": "ES256", "license": "Proprietary", "ci": "none"},
    {"project_name": "Billing API", "rate_limit": "20/second", "access_token_ttl_seconds": "300"},
    {"project_name": "Orders", "package_name": "orders_core", "rate_limit": "5000/hour"},
]

UNSUPPORTED = [
    ({"project_slug": "Bad Slug"}, "project_slug: 'Bad Slug' is not a valid distribution name"),
    ({"package_name": "import"}, "package_name: 'import' is a Python keyword"),
    ({"package_name": "my-package"}, "package_name: 'my-package' is not a Python identifier"),
    ({"rate_limit": "lots"}, "rate_limit: 'lots' is not a rate; use N/second, N/minute or N/hour"),
    ({"access_token_ttl_seconds": "-1"}, "access_token_ttl_seconds: '-1' is not a positive"),
    ({"project_name": 'A "quoted" name'}, "project_name: 'A \"quoted\" name' contains a quote"),
]

LEFTOVER_JINJA = re.compile(r"\{\{\s*cookiecutter|\{%|%\}|\{#")


def combination_id(answers: dict[str, str]) -> str:
    return "-".join(f"{key}:{value}" for key, value in answers.items()) or "defaults"


def text_files(project: Path) -> list[Path]:
    files = []
    for path in project.rglob("*"):
        if path.is_file() and ".venv" not in path.parts:
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


@pytest.fixture(params=SUPPORTED, ids=combination_id)
def baked(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[dict[str, str], Path]:
    answers: dict[str, str] = request.param
    return answers, bake(tmp_path, **answers)


def test_bake_is_complete_and_free_of_template_syntax(baked: tuple[dict[str, str], Path]) -> None:
    """The bake exits 0, records its answers, and no file keeps Jinja syntax."""
    answers, project = baked
    recorded = json.loads((project / ".cookiecutter.json").read_text())
    for key, value in answers.items():
        assert recorded[key] == value
    assert not any(key.startswith("_") and key != "_template" for key in recorded)
    leftovers = [
        f"{path.relative_to(project)}: {match.group()}"
        for path in text_files(project)
        for match in [LEFTOVER_JINJA.search(path.read_text(encoding="utf-8"))]
        if match
    ]
    assert leftovers == []
    package = recorded["package_name"]
    for expected in (
        "pyproject.toml",
        "README.md",
        "Dockerfile",
        "compose.yaml",
        "Makefile",
        ".gitignore",
        ".env",
        ".env.example",
        "LICENSE",
        f"src/{package}/main.py",
    ):
        assert (project / expected).is_file(), expected


def test_only_the_chosen_options_remain(baked: tuple[dict[str, str], Path]) -> None:
    answers, project = baked
    ci = answers.get("ci", "github")
    assert (project / ".github" / "workflows" / "ci.yml").exists() == (ci == "github")
    assert (project / ".github" / "dependabot.yml").exists() == (ci == "github")
    assert (project / ".gitlab-ci.yml").exists() == (ci == "gitlab")
    assert not (project / "licenses").exists()
    license_text = (project / "LICENSE").read_text()
    expected = {
        "MIT": "MIT License",
        "Apache-2.0": "Apache License",
        "Proprietary": "All rights reserved",
    }
    assert expected[answers.get("license", "MIT")] in license_text
    asymmetric = answers.get("jwt_algorithm", "HS256") != "HS256"
    assert (project / "keys" / "jwt-private.pem").exists() == asymmetric
    assert ("APP_JWT_SECRET=" in (project / ".env").read_text()) == (not asymmetric)


def test_the_project_name_titles_the_api(baked: tuple[dict[str, str], Path]) -> None:
    """Swagger UI and the OpenAPI schema show the project's own name."""
    _, project = baked
    recorded = json.loads((project / ".cookiecutter.json").read_text())
    main = (project / "src" / recorded["package_name"] / "main.py").read_text()
    title = re.escape(recorded["project_name"])
    assert re.search(rf'FastAPI\(\s*title="{title}"', main)


def distinct_modification_times(project: Path) -> None:
    """Give this bake's Python files a modification time no other bake has.

    mypy's cache, shared by all bakes for speed, trusts a module whose file has the size and
    the whole-second mtime it recorded, without reading it. Two bakes made in the same second
    whose package names are equally long (billing_api, orders_core) look the same to it, and
    the second is then checked against the first one's imports.
    """
    stamp = random.randrange(10**9, 1_700_000_000)  # seconds since 1970: 2001 to 2023
    for path in project.rglob("*.py"):
        os.utime(path, (stamp, stamp))


def test_generated_project_is_clean_under_its_own_linters(
    baked: tuple[dict[str, str], Path], bake_venv: Path
) -> None:
    """ruff check, ruff format --check and mypy --strict pass on every bake."""
    _, project = baked
    distinct_modification_times(project)
    env = clean_environment(MYPY_CACHE_DIR=str(bake_venv / "mypy-cache"))
    run([bake_venv / "bin" / "ruff", "check", "--no-cache", "."], cwd=project, env=env)
    run([bake_venv / "bin" / "ruff", "format", "--check", "--no-cache", "."], cwd=project, env=env)
    run([bake_venv / "bin" / "mypy"], cwd=project, env=env)


@pytest.mark.parametrize(("answers", "message"), UNSUPPORTED, ids=[m for _, m in UNSUPPORTED])
def test_bad_answers_fail_the_hook(
    tmp_path: Path, answers: dict[str, str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A bad answer raises FailedHookException, says why, and writes no project."""
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    assert f"error: {message}" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("answers", "message"), UNSUPPORTED[:3], ids=[m for _, m in UNSUPPORTED[:3]]
)
def test_the_cli_prints_one_line_naming_the_field(
    tmp_path: Path, answers: dict[str, str], message: str
) -> None:
    """Through the real `cookiecutter` command, the user sees one line that names the field."""
    command = [TOOLS_DIR / "cookiecutter", "--no-input", TEMPLATE_DIR, "--output-dir", tmp_path]
    command += [f"{key}={value}" for key, value in answers.items()]
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    hook_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(hook_lines) == 1, result.stderr
    assert hook_lines[0].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("field", "value"), [("jwt_algorithm", "none"), ("ci", "jenkins"), ("python_version", "3.9")]
)
def test_an_unknown_choice_is_refused_before_any_hook(
    tmp_path: Path, field: str, value: str
) -> None:
    """Cookiecutter itself refuses a value outside a choice list, naming the field and choices."""
    with pytest.raises(ValueError, match=f"{value} provided for choice variable {field}"):
        bake(tmp_path, **{field: value})
    assert list(tmp_path.iterdir()) == []


def test_two_bakes_never_share_a_secret(tmp_path: Path) -> None:
    first = bake(tmp_path / "one")
    second = bake(tmp_path / "two")
    secrets_of = [
        {
            line.split("=", 1)[1]
            for line in (p / ".env").read_text().splitlines()
            if "=" in line and ("SECRET" in line or "PASSWORD" in line)
        }
        for p in (first, second)
    ]
    assert len(secrets_of[0]) == 2
    assert secrets_of[0].isdisjoint(secrets_of[1])


def test_two_key_pair_bakes_never_share_a_key(tmp_path: Path) -> None:
    keys = [
        (bake(tmp_path / name, jwt_algorithm="ES256") / "keys" / "jwt-private.pem").read_text()
        for name in ("one", "two")
    ]
    assert keys[0] != keys[1]


def test_the_command_line_bake_works_offline_with_defaults(tmp_path: Path) -> None:
    """`cookiecutter --no-input <template>` works as the README says (no network is used)."""
    run(
        [TOOLS_DIR / "cookiecutter", "--no-input", TEMPLATE_DIR, "--output-dir", tmp_path],
        cwd=tmp_path,
        env=clean_environment(),
    )
    assert (tmp_path / "auth-service" / "src" / "auth_service" / "main.py").is_file()


@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_a_bake_prints_the_next_steps_and_no_secret(tmp_path: Path, algorithm: str) -> None:
    """The steps are the README's quickstart, after a `cd`; nothing from `.env` or `keys/`."""
    result = run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            TEMPLATE_DIR,
            "--output-dir",
            tmp_path,
            f"jwt_algorithm={algorithm}",
        ],
        cwd=tmp_path,
        env=clean_environment(),
    )
    project = tmp_path / "auth-service"
    printed = result.stdout + result.stderr
    assert f"  cd {project}\n" in printed
    for step in ("make install", "redis-server", "create-user alice", "make run", "curl -H"):
        assert step in printed
    readme = (project / "README.md").read_text()
    for line in printed.splitlines()[2:]:
        assert line.removeprefix("  ") in readme
    secrets = [
        line.split("=", 1)[1]
        for line in (project / ".env").read_text().splitlines()
        if line.startswith(("APP_JWT_SECRET=", "REDIS_PASSWORD="))
    ]
    assert len(secrets) == (2 if algorithm == "HS256" else 1)
    assert not [secret for secret in secrets if secret in printed]
    assert "PRIVATE KEY" not in printed
