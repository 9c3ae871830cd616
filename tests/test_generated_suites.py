"""Every Python version a bake offers is proven on a real interpreter of that version.

For each `python_version` answer one bake runs exactly the README's commands, `make install`,
`make lint` and `make test`, with a virtualenv of its own made by that interpreter: 3.11 is
this machine's, 3.12 comes from an Ubuntu 24.04 root file system, 3.13, 3.14 and 3.15 from a
Debian sid one (`tools.roots`; made once, then cached). Between them the bakes cover every
algorithm and both ways of finding Redis: the suites start their own throwaway redis-server,
except the RS256 one, which is given `REDIS_URL`. The default bake (3.14, HS256) is made as a
team keeps one current: `cruft create`, then a later template brought in with `cruft update`
(tests/test_update.py checks the update itself), so the suite that passes is an updated
project's.

The suites run side by side: each takes minutes, much of it waiting (served processes, Redis
outages, key fetches). A skipped test inside a suite counts as a failure here. A root file
system that cannot be made (not root, no apt) skips its bakes, saying why, except under
`CI=true`, where that is a failure.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tools import roots

from .baking import (
    HOST_PYTHON,
    TEMPLATE_DIR,
    bake,
    bake_updated_with_cruft,
    clean_environment,
    install_into,
    load_generated_module,
)

SUMMARY = re.compile(r"^=* ?(?P<counts>\d+ passed.*) in [\d.]+s", re.MULTILINE)
INTERPRETER = re.compile(r"^interpreter: Python (?P<version>\S+)$", re.MULTILINE)
# One suite alone takes about 5 minutes of CPU and 10 of wall time; five share two cores.
SUITE_TIMEOUT_SECONDS = 35 * 60
HOST = "host"  # where a proof runs when it needs no root file system


@dataclass(frozen=True)
class Proof:
    """One bake, and the interpreter and place its suite runs on."""

    python_version: str
    jwt_algorithm: str
    place: str  # HOST, or the name of a root in `tools.roots`
    cruft: bool = False  # created with cruft create, then brought up to date with cruft update
    redis_url: bool = False  # told where Redis is instead of starting its own

    @property
    def id(self) -> str:
        ways = "-cruft" * self.cruft + "-REDIS_URL" * self.redis_url
        return f"{self.python_version}-{self.jwt_algorithm}{ways}-{self.place}"


PROOFS = [
    Proof("3.14", "HS256", roots.SID.name, cruft=True),  # the default answers
    Proof("3.15", "HS256", roots.SID.name),
    Proof("3.13", "ES256", roots.SID.name),
    Proof("3.12", "HS256", roots.NOBLE.name),
    Proof("3.11", "RS256", HOST, redis_url=True),
]
RECIPES = {recipe.name: recipe for recipe in (roots.SID, roots.NOBLE)}


def unavailable(what: str) -> NoReturn:
    """A proof cannot run on this machine: a failure on CI, elsewhere a skip saying why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"a Python version cannot be proven on CI: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server this module starts, handed to one suite as REDIS_URL."""
    project = bake(tmp_path_factory.mktemp("redis-helper"))
    helper: Any = load_generated_module(project, "tests/redis_server.py", "generated_redis_server")
    server = helper.RedisServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/3"  # a database other than the default
    finally:
        server.close()


def assert_only_passes(output: str) -> str:
    match = SUMMARY.search(output)
    assert match is not None, output[-3000:]
    counts = match["counts"]
    assert re.fullmatch(r"\d+ passed", counts), f"not everything passed: {counts}\n{output[-3000:]}"
    return counts


@dataclass
class Suite:
    """A bake's install, lint and suite, running in the background in a process group of its
    own; what it prints goes to a file."""

    proof: Proof
    process: subprocess.Popen[bytes]
    output: Path
    started: float

    def result(self) -> tuple[str, str, float]:
        """Wait for it; fail with its output unless it ran on the promised Python and everything
        passed. Returns the interpreter's version, the counts and the minutes it took."""
        try:
            self.process.wait(timeout=SUITE_TIMEOUT_SECONDS - (time.monotonic() - self.started))
        except subprocess.TimeoutExpired:
            self.stop()
        minutes = (time.monotonic() - self.started) / 60
        text = self.output.read_text(errors="replace")
        if self.process.returncode != 0:
            pytest.fail(f"{self.proof.id} exited {self.process.returncode}:\n{text[-6000:]}")
        interpreter = INTERPRETER.search(text)
        assert interpreter is not None, text[-3000:]
        version = interpreter["version"]
        assert version.startswith(f"{self.proof.python_version}."), text[-3000:]
        return version, assert_only_passes(text), minutes

    def stop(self) -> None:
        """End the whole group (make, pytest, the servers it started), not only its shell."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def readme_commands(project: Path, python: str) -> list[str]:
    """The README's three commands, with the proof's interpreter and a virtualenv in the bake
    (different Pythons cannot share one); between install and lint it prints its version."""
    venv = project / ".venv"
    make = f"make PYTHON={python} VENV={shlex.quote(str(venv))}"
    return [
        "sh",
        "-c",
        f"{make} install && echo interpreter: $({venv}/bin/python -V) && {make} lint "
        f"&& {make} test ARGS='-p no:cacheprovider'",
    ]


def start(proof: Proof, project: Path, root: roots.Root | None, redis_url: str) -> Suite:
    """Start a proof's commands: in its root, or on this machine's Python."""
    python = f"python{proof.python_version}"
    extra = {"REDIS_URL": redis_url} if proof.redis_url else {}
    if root is None:
        command = readme_commands(project, shutil.which(python) or python)
        env = clean_environment(**extra)
    else:
        command = root.command(readme_commands(project, python), workdir=project, binds=[project])
        env = roots.environment(**extra)
    output = project.parent / f"{project.name}-suite.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to be stopped as a whole
        )
    return Suite(proof, process, output, time.monotonic())


def make_project(proof: Proof, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"suite-{proof.id}")
    answers = {"python_version": proof.python_version, "jwt_algorithm": proof.jwt_algorithm}
    if proof.cruft:
        return bake_updated_with_cruft(directory, **answers)
    return bake(directory, **answers)


def selected_proofs(session: pytest.Session) -> list[Proof]:
    """The proofs this run's tests ask for (all, unless `-k` or a test id picks some)."""
    callspecs = [getattr(item, "callspec", None) for item in session.items]
    wanted = {spec.params.get("proof") for spec in callspecs if spec is not None}
    return [proof for proof in PROOFS if proof in wanted]


@pytest.fixture(scope="module")
def suites(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_redis: str
) -> Iterator[dict[str, Suite | str]]:
    """The selected proofs' suites, each started as soon as its place is ready: this machine's
    at once, each root's once it is made (the roots are made side by side). A proof whose place
    cannot be had maps to the reason instead."""
    proofs = selected_proofs(request.session)
    projects = {proof.id: make_project(proof, tmp_path_factory) for proof in proofs}
    running: dict[str, Suite | str] = {}
    try:
        for proof in proofs:
            if proof.place == HOST and shutil.which(f"python{proof.python_version}") is None:
                running[proof.id] = f"no python{proof.python_version} on PATH"
            elif proof.place == HOST:
                running[proof.id] = start(proof, projects[proof.id], None, shared_redis)
        needed = {RECIPES[proof.place] for proof in proofs if proof.place != HOST}
        with concurrent.futures.ThreadPoolExecutor() as pool:
            making = {pool.submit(roots.ensure_root, recipe): recipe for recipe in needed}
            for future in concurrent.futures.as_completed(making):
                name = making[future].name
                try:
                    root: roots.Root | str = future.result()
                except roots.CommandFailed as failure:  # something is there but broken
                    root = f"making the {name} root failed: {failure}"
                except roots.RootUnavailable as missing:
                    root = f"no {name} root file system: {missing}"
                for proof in proofs:
                    if proof.place == name:
                        running[proof.id] = (
                            root
                            if isinstance(root, str)
                            else start(proof, projects[proof.id], root, shared_redis)
                        )
        yield running
    finally:
        for suite in running.values():
            if isinstance(suite, Suite):
                suite.stop()


def test_every_offered_python_version_and_algorithm_is_proven() -> None:
    answers = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    assert sorted(proof.python_version for proof in PROOFS) == sorted(answers["python_version"])
    assert {proof.jwt_algorithm for proof in PROOFS} == set(answers["jwt_algorithm"])
    default = next(proof for proof in PROOFS if proof.cruft)
    assert (default.python_version, default.jwt_algorithm) == (
        answers["python_version"][0],
        answers["jwt_algorithm"][0],
    ), "the cruft-updated bake is the default one"
    for proof in PROOFS:
        if proof.place != HOST:
            assert f"python{proof.python_version}" in RECIPES[proof.place].packages
            assert roots.ROOT_OF_PYTHON[proof.python_version] is RECIPES[proof.place]


@pytest.mark.slow
@pytest.mark.parametrize("proof", PROOFS, ids=lambda proof: proof.id)
def test_the_bake_installs_lints_and_passes_its_suite_on_a_real_interpreter(
    suites: dict[str, Suite | str], proof: Proof
) -> None:
    suite = suites[proof.id]
    if isinstance(suite, str):
        if "failed" in suite.split(":", 1)[0]:
            pytest.fail(suite, pytrace=False)
        unavailable(suite)
    version, counts, minutes = suite.result()
    print(f"{proof.id}: Python {version}, {counts}, {minutes:.1f} min")


def test_without_any_redis_the_suite_stops_with_one_clear_message(
    tmp_path: Path, bake_venv: Path
) -> None:
    """No REDIS_URL and no redis-server on PATH: one message saying how to get a Redis."""
    project = bake(tmp_path, python_version=HOST_PYTHON)
    install_into(bake_venv, project)
    env = clean_environment(PATH=str(bake_venv / "bin"))  # python, but no redis-server
    result = subprocess.run(
        [
            str(bake_venv / "bin" / "python"),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/test_health.py",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 4, result.stdout[-2000:]
    assert result.stdout.count("These tests need a real Redis") == 1
    for advice in (
        "REDIS_URL",
        "apt-get install redis-server",
        "brew install redis",
        "docker compose up -d redis",
    ):
        assert advice in result.stdout
