"""`docker compose up`, for real: the generated Dockerfile and compose files on a Docker engine.

Each bake is built and started exactly as generated, as its README says, with the bake's own
`.env` and key files (owner-only, as the post-gen hook writes them). Only the published host
ports and the compose project name differ, so that runs never collide with what else the
machine serves. The engine comes from `tools.docker_engine` and the base images from
`tools.stand_ins`; the output says whether the base images are the real ones or stand-ins built
from Debian's packages.

Deselect with `-m 'not docker'`. With `CI=true` a missing engine fails; elsewhere it skips,
saying what is missing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml
from packaging.utils import canonicalize_name

from tools.docker_engine import (
    CommandFailed,
    Compose,
    DockerUnavailable,
    compose_v1,
    ensure_compose_v2,
    ensure_engine,
    stack_lock,
)
from tools.stand_ins import ensure_base_images

from .baking import bake, clean_environment
from .locks import DISTRIBUTIONS_SCRIPT, MARKER_ENVIRONMENT_SCRIPT, exported, installed_set

pytestmark = pytest.mark.docker

HEALTHY_WITHIN_SECONDS = 180  # generous: two shared cores; a restart loop fails at once anyway
PASSWORD = "correct horse battery staple"
APP_UID = "10001"  # the Dockerfile's user
ORDINARY_USER = 1000  # the first login account of a typical Linux host


def unavailable(what: str) -> NoReturn:
    """Something the Docker tests need is missing: a failure on CI, elsewhere a skip saying so."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the Docker tests cannot run on CI: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def docker(
    tmp_path_factory: pytest.TempPathFactory, report: Callable[[str], None]
) -> Iterator[dict[str, Compose | None]]:
    """A running engine and the Compose commands: "v2" (`docker compose`, which every scenario
    runs with) and "v1" (`docker-compose`, for the core scenario, None where the machine has no
    v1). Stops the engine afterwards if it started it."""
    try:
        engine = ensure_engine(tmp_path_factory.mktemp("docker-engine"))
    except CommandFailed as failure:  # something is there but broken: never a skip
        pytest.fail(f"the Docker engine: {failure}", pytrace=False)
    except DockerUnavailable as missing:
        unavailable(f"no Docker engine: {missing}")
    try:
        try:
            v2 = ensure_compose_v2()
        except CommandFailed as failure:
            pytest.fail(f"Compose v2: {failure}", pytrace=False)
        except DockerUnavailable as missing:
            unavailable(f"no Compose v2: {missing}")
        v1 = compose_v1()
        report(f"compose: {v2}; {v1 or 'no Compose v1'}")
        yield {"v2": v2, "v1": v1}
    finally:
        engine.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def base_images(project: Path, compose_files: Sequence[str]) -> list[str]:
    """The images the Dockerfile builds FROM and the compose files run without building."""
    dockerfile = (project / "Dockerfile").read_text()
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    assert version is not None
    images = {
        name.replace("${PYTHON_VERSION}", version[1])
        for name in re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    }
    for file in compose_files:
        services = yaml.safe_load((project / file).read_text())["services"]
        images |= {s["image"] for s in services.values() if "image" in s and "build" not in s}
    return sorted(images)


class Stack:
    """One compose project of one bake, driven through the Compose command line."""

    def __init__(self, compose: Compose, project: Path, file: str = "compose.yaml") -> None:
        self.project = project
        self.file = file
        self.compose = compose
        # Lowercase letters and digits: a name both Compose versions accept unchanged.
        self.name = f"tpl{os.getpid()}{project.parent.name[-6:]}".lower().replace("_", "")
        self.app_port, self.redis_port = free_port(), free_port()
        self.command = [*compose.command, "--project-name", self.name, "--file", file]
        self.env = clean_environment(
            APP_HOST_PORT=str(self.app_port), REDIS_HOST_PORT=str(self.redis_port)
        )
        self.base_url = f"http://127.0.0.1:{self.app_port}"
        self.package = json.loads((project / ".cookiecutter.json").read_text())["package_name"]

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args],
            cwd=self.project,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout}\n"
                f"--- stderr ---\n{result.stderr}\n--- logs ---\n{self.logs()}",
                pytrace=False,
            )
        return result

    def bake_as_an_ordinary_user(self) -> None:
        """Run as root, the tests' bakes are root's; give the key pair (0700/0600 as the hook
        wrote it) to an ordinary uid instead, as most users' bakes are. The `keys` step must
        then read files neither root's nor 10001's."""
        if os.geteuid() != 0:
            return  # the bake already belongs to an ordinary user
        for path in [self.project / "keys", *(self.project / "keys").iterdir()]:
            os.chown(path, ORDINARY_USER, ORDINARY_USER)

    def logs(self, service: str = "") -> str:
        result = subprocess.run(
            [*self.command, "logs", "--no-color", *([service] if service else [])],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout[-6000:] + result.stderr[-2000:]

    def containers(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of the service's containers (all of them, running or not)."""
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        if not ids:
            return []
        inspected = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, timeout=60, check=True
        )
        found: list[dict[str, Any]] = json.loads(inspected.stdout)
        return found

    def wait_until_healthy(self, service: str = "app", replicas: int = 1) -> None:
        """Wait until every replica is healthy; fail at once on a restart or an exit."""
        started = time.monotonic()
        while True:
            containers = self.containers(service)
            for container in containers:
                state = container["State"]
                if container["RestartCount"] > 0 or state["Status"] in {"exited", "restarting"}:
                    pytest.fail(
                        f"{container['Name']} is {state['Status']} after "
                        f"{container['RestartCount']} restarts (exit {state['ExitCode']}):\n"
                        f"{self.logs(service)}",
                        pytrace=False,
                    )
            healthy = [
                c for c in containers if c["State"].get("Health", {}).get("Status") == "healthy"
            ]
            if len(healthy) == replicas:
                return
            if time.monotonic() - started > HEALTHY_WITHIN_SECONDS:
                pytest.fail(f"{service} not healthy in time:\n{self.logs()}", pytrace=False)
            time.sleep(1)

    def create_user(self, name: str, scopes: str, *exec_options: str) -> str:
        """The README's command: the password piped into `exec -T`."""
        result = self.run(
            "exec", "-T", *exec_options, "app",
            "python", "-m", self.package, "create-user", name, "--scopes", scopes,
            stdin=PASSWORD + "\n",
        )  # fmt: skip
        return result.stdout

    def login(self, name: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/auth/token",
            data={"username": name, "password": password},
            headers=headers,
            timeout=30,
        )

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks still labelled with this compose project."""
        label = f"label=com.docker.compose.project={self.name}"
        found = []
        for kind in (["ps", "-a"], ["volume", "ls"], ["network", "ls"]):
            listed = subprocess.run(
                ["docker", *kind, "-q", "--filter", label],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            found += [f"{kind[0]} {item}" for item in listed.stdout.split()]
        return found


@pytest.fixture(scope="session")
def images_used(
    docker: dict[str, Compose | None],
    tmp_path_factory: pytest.TempPathFactory,
    report: Callable[[str], None],
) -> dict[str, str]:
    """The base images every bake and both compose files need, present on the engine."""
    project = bake(tmp_path_factory.mktemp("images"), jwt_algorithm="ES256")
    needed = base_images(project, ["compose.yaml", "compose.scale.yaml"])
    try:
        used = ensure_base_images(needed, tmp_path_factory.mktemp("base-images"))
    except DockerUnavailable as missing:
        pytest.fail(f"base images: {missing}", pytrace=False)
    for name, origin in sorted(used.items()):
        report(f"base image {name}: {origin}")
    if "stand-in" in used.values():
        report(
            "stand-ins were used: they prove the Dockerfile's steps, the compose wiring, "
            "healthchecks, users, volumes and permissions, not the upstream base images"
        )
    return used


@pytest.fixture
def stack(
    request: pytest.FixtureRequest,
    docker: dict[str, Compose | None],
    images_used: dict[str, str],
    tmp_path: Path,
    report: Callable[[str], None],
) -> Iterator[Stack]:
    """A fresh bake for `request.param` = (answers, compose file[, "v1"]), run with Compose v2
    (or v1 when named), torn down with `down -v`; one at a time on this machine (`stack_lock`)."""
    answers, file, *version = request.param
    compose = docker[version[0] if version else "v2"]
    if compose is None:
        unavailable("no Compose v1 (`docker-compose` 1.x) on PATH")
    stack = Stack(compose, bake(tmp_path, **answers), file)
    report(f"{request.node.name}: {compose} runs {file}")
    with stack_lock():  # another test run on this engine builds the same image name
        try:
            yield stack
        finally:
            stack.run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


def is_request_line(line: str, method: str, path: str, status: int) -> bool:
    """A JSON request line of the app (compose runs production, whose log format is JSON)."""
    if not line.startswith("{"):
        return False
    entry = json.loads(line)
    return (entry.get("method"), entry.get("path"), entry.get("status")) == (method, path, status)


def redis_answers_without_password(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(200)


def assert_image_holds_exactly_the_lock(stack: Stack) -> None:
    """The image's Python has the lock's runtime packages at the lock's versions for its own
    platform and Python, the service, and nothing else: nothing was resolved at build time."""
    python = ("exec", "-T", "app", "python", "-c")
    markers = json.loads(stack.run(*python, MARKER_ENVIRONMENT_SCRIPT).stdout)
    installed = json.loads(stack.run(*python, DISTRIBUTIONS_SCRIPT).stdout)
    expected = installed_set(exported(stack.project), markers)
    expected[canonicalize_name(stack.project.name)] = "0.1.0"
    assert {canonicalize_name(name): version for name, version in installed.items()} == expected


@pytest.mark.parametrize(
    "stack",
    [
        ({"jwt_algorithm": "HS256"}, "compose.yaml"),
        ({"jwt_algorithm": "RS256"}, "compose.yaml"),
        ({"jwt_algorithm": "ES256"}, "compose.yaml"),
        # The README names `docker-compose` beside `docker compose`: the core scenario, on v1.
        ({"jwt_algorithm": "HS256"}, "compose.yaml", "v1"),
    ],
    ids=["HS256", "RS256", "ES256", "HS256-compose-v1"],
    indirect=True,
)
def test_compose_up_serves_logged_in_requests(stack: Stack) -> None:
    """build, up, healthy; a user made with `exec -T` logs in; the app is not root; Redis wants
    its password; users outlive the containers; `down -v` leaves nothing."""
    algorithm = json.loads((stack.project / ".cookiecutter.json").read_text())["jwt_algorithm"]
    if algorithm == "ES256":  # RS256 keeps the keys of whoever runs the tests
        stack.bake_as_an_ordinary_user()
    timings = {}
    started = time.monotonic()
    stack.run("build")
    timings["build"] = time.monotonic() - started
    started = time.monotonic()
    stack.run("up", "-d")
    stack.wait_until_healthy()
    timings["up until healthy"] = time.monotonic() - started

    assert "created user alice" in stack.create_user("alice", "read write")
    login = stack.login("alice")
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = httpx.get(f"{stack.base_url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert me.status_code == 200, me.text
    assert me.json() == {"sub": "alice", "scopes": ["read", "write"]}
    assert httpx.get(f"{stack.base_url}/me", timeout=30).status_code == 401

    assert stack.run("exec", "-T", "app", "id", "-u").stdout.strip() == APP_UID
    assert_image_holds_exactly_the_lock(stack)
    if (stack.project / "keys").is_dir():  # the key pair reached the app, and no one else
        copied = stack.run("exec", "-T", "app", "stat", "-c", "%a %u", "/app/keys/jwt-private.pem")
        assert copied.stdout.split() == ["400", APP_UID]
        assert (stack.project / "keys" / "jwt-private.pem").stat().st_mode & 0o777 == 0o600
    assert redis_answers_without_password(stack.redis_port).startswith(b"-NOAUTH")

    started = time.monotonic()
    stack.run("down", "--timeout", "5")  # containers go, volumes stay
    assert any(item.startswith("volume ") for item in stack.leftovers())  # the label is seen
    stack.run("up", "-d")
    stack.wait_until_healthy()
    timings["down, up until healthy"] = time.monotonic() - started
    assert stack.login("alice").status_code == 200  # the users volume survived

    stack.run("down", "--volumes", "--timeout", "5")
    assert stack.leftovers() == []
    print(
        f"\n{stack.project.name} {stack.file}: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    )


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "RS256"}, "compose.yaml")], ids=["RS256"], indirect=True
)
def test_a_key_the_app_cannot_read_is_one_line_at_startup(stack: Stack) -> None:
    """The host's owner-only key mounted straight into the container (what compose.yaml used to
    do): the app stops with status 2 and one line naming the setting, not a traceback."""
    stack.run("build", "app")
    image = yaml.safe_load((stack.project / "compose.yaml").read_text())["services"]["app"]["image"]
    name = f"{stack.name}-unreadable-key"
    try:
        result = subprocess.run(
            ["docker", "run", "--rm", "--name", name, "--env-file", ".env",
             "--volume", f"{stack.project / 'keys'}:/app/keys:ro", image],
            cwd=stack.project, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:  # a container that did not stop in time is not left running
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "error: APP_JWT_PRIVATE_KEY_FILE: cannot read keys/jwt-private.pem: Permission denied "
        f"(this process runs as uid {APP_UID})"
    ]


def token_kid(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def published_kids(stack: Stack) -> list[str]:
    response = httpx.get(f"{stack.base_url}/.well-known/jwks.json", timeout=30)
    assert response.status_code == 200, response.text
    return [key["kid"] for key in response.json()["keys"]]


def me_status(stack: Stack, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{stack.base_url}/me", headers=headers, timeout=30).status_code


def reload_keys(stack: Stack) -> None:
    """What the README says to do after changing keys/: `up -d` copies, `restart app` loads."""
    stack.run("up", "-d")
    stack.run("restart", "app")
    stack.wait_until_healthy()


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "ES256"}, "compose.yaml")], ids=["ES256"], indirect=True
)
def test_rotated_keys_reach_the_app_through_the_keys_step(stack: Stack) -> None:
    """`rotate-keys` run as the owner of keys/ (from the app's image), then `up -d` and
    `restart app`: the previous public key reaches the app (0400, its uid), its tokens still
    work, new tokens carry the new kid, the JWKS lists both. Removing the previous file and
    reloading again revokes it: the `keys` step drops the stale copy from the volume."""
    stack.bake_as_an_ordinary_user()
    stack.run("build")
    stack.run("up", "-d")
    stack.wait_until_healthy()
    stack.create_user("alice", "read")
    old_token = stack.login("alice").json()["access_token"]
    old_kid = token_kid(old_token)
    assert published_kids(stack) == [old_kid]

    keys = stack.project / "keys"
    owner = keys.stat()
    image = yaml.safe_load((stack.project / "compose.yaml").read_text())["services"]["app"]["image"]
    rotated = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", f"{owner.st_uid}:{owner.st_gid}",
         "--volume", f"{keys}:/keys", "--env", "APP_JWT_PRIVATE_KEY_FILE=/keys/jwt-private.pem",
         "--env", "APP_JWT_PUBLIC_KEY_FILE=/keys/jwt-public.pem",
         image, "python", "-m", stack.package, "rotate-keys"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert (keys / "jwt-private.pem").stat().st_mode & 0o777 == 0o600

    reload_keys(stack)
    assert me_status(stack, old_token) == 200
    new_token = stack.login("alice").json()["access_token"]
    new_kid = token_kid(new_token)
    assert new_kid != old_kid
    assert published_kids(stack) == [new_kid, old_kid]
    copied = stack.run(
        "exec", "-T", "app", "stat", "-c", "%a %u", "/app/keys/jwt-public.previous.pem"
    )
    assert copied.stdout.split() == ["400", APP_UID]

    (keys / "jwt-public.previous.pem").unlink()
    reload_keys(stack)
    assert published_kids(stack) == [new_kid]
    assert me_status(stack, old_token) == 401
    assert me_status(stack, new_token) == 200


def buildkit_client() -> str | None:
    """A docker client that builds with BuildKit: one with buildx, or an engine-era client
    (before 23.0) whose built-in BuildKit `DOCKER_BUILDKIT=1` turns on."""
    for client in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        if not Path(client).exists():
            continue
        buildx = subprocess.run(
            [client, "buildx", "version"], capture_output=True, timeout=60, check=False
        )
        version = subprocess.run(
            [client, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
        if buildx.returncode == 0 or (version and int(version.split(".")[0]) < 23):
            return client
    return None


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "HS256"}, "compose.yaml")], ids=["HS256"], indirect=True
)
def test_dockerfile_builds_with_buildkit_from_local_base_images(stack: Stack) -> None:
    """No `# syntax=` frontend to fetch: BuildKit builds from the images the engine has. After a
    code change the dependency layer comes from the cache: only the service is built again."""
    client = buildkit_client()
    if client is None:
        unavailable("no docker client here builds with BuildKit (no buildx, no client < 23)")

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [client, "build", "--progress=plain", "--tag", f"{stack.name}-buildkit", "."],
            cwd=stack.project, env={**stack.env, "DOCKER_BUILDKIT": "1"},
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    module = stack.project / "src" / stack.package / "__init__.py"
    original = module.read_text()
    try:
        first = build()
        print(f"\nBuildKit build with {client}: exit {first.returncode}")
        assert first.returncode == 0, first.stderr[-3000:]
        # A change no earlier run made: BuildKit's cache outlives the run.
        module.write_text(original + f"# A code change, {secrets.token_hex(8)}.\n")
        second = build()
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        module.write_text(original)
        subprocess.run(
            ["docker", "rmi", f"{stack.name}-buildkit"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    steps = build_steps(second.stderr + second.stdout)
    dependencies = [cached for step, cached in steps.items() if "--no-install-project" in step]
    service = [cached for step, cached in steps.items() if "--no-editable" in step]
    assert dependencies == [True], steps
    assert service == [False], steps


def build_steps(progress: str) -> dict[str, bool]:
    """The build stage's RUN steps in BuildKit's plain progress output, each with whether it came
    from the cache (`#7 [build 4/6] RUN ...`, later `#7 CACHED`)."""
    names = {
        number: step
        for number, step in re.findall(r"^#(\d+) \[build +\d+/\d+\] (RUN .*)$", progress, re.M)
    }
    cached = set(re.findall(r"^#(\d+) CACHED$", progress, re.M))
    return {step: number in cached for number, step in names.items()}


PROXY_ADDRESS = "172.28.0.2"  # compose.scale.yaml's fixed address for nginx
DIRECT_REQUEST = """
import urllib.error, urllib.request
request = urllib.request.Request(
    "http://127.0.0.1:8000/auth/token", data=b"username=mallory&password=wrong-password",
    headers={"X-Forwarded-For": "198.51.100.9"},
)
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def wait_for_proxy(stack: Stack) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_SECONDS
    while True:
        try:
            if httpx.get(f"{stack.base_url}/health/live", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy never answered:\n{stack.logs('proxy')}", pytrace=False)
        time.sleep(1)


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "ES256"}, "compose.scale.yaml")], ids=["ES256"], indirect=True
)
def test_scaled_replicas_behind_the_proxy(stack: Stack) -> None:
    """`--scale app=3`: all healthy, requests through nginx reach more than one replica, and
    the app believes the proxy's X-Forwarded-For and nobody else's."""
    stack.bake_as_an_ordinary_user()
    # Login buckets live 12 s at 5/minute; at 5/hour they outlive the test, which reads them.
    with (stack.project / ".env").open("a") as env:
        env.write("APP_LOGIN_RATE_LIMIT=5/hour\n")
    started = time.monotonic()
    stack.run("up", "-d", "--build", "--scale", "app=3")
    stack.wait_until_healthy(replicas=3)
    waited = time.monotonic() - started
    wait_for_proxy(stack)

    assert "created user alice" in stack.create_user("alice", "read", "--index", "1")
    # A failed login leaves a bucket (a success gives its attempt back), read at the end.
    claim = {"X-Forwarded-For": "203.0.113.7"}  # a client's own claim
    assert stack.login("alice", "a wrong password", **claim).status_code == 401
    login = stack.login("alice", **claim)
    assert login.status_code == 200, login.text
    bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
    with httpx.Client(base_url=stack.base_url, headers=bearer, timeout=30) as client:
        statuses = [client.get("/me").status_code for _ in range(30)]
    assert statuses == [200] * 30
    served_by = {
        container.strip()
        for container, _, line in (entry.partition("|") for entry in stack.logs("app").splitlines())
        if is_request_line(line.strip(), "GET", "/me", 200)
    }
    assert len(served_by) > 1, served_by

    # Straight to a replica, bypassing the proxy, with a forged header: not believed.
    direct = stack.run("exec", "-T", "--index", "2", "app", "python", "-c", DIRECT_REQUEST)
    assert direct.stdout.strip() == "401"

    # The login buckets are keyed by the address the app believed.
    scanned = stack.run(
        "exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "*:{login}:client:*"
    ).stdout.split()
    believed = sorted(key.rsplit(":client:", 1)[1] for key in scanned)
    networks = stack.containers("proxy")[0]["NetworkSettings"]["Networks"]
    (edge,) = networks.values()
    assert edge["IPAddress"] == PROXY_ADDRESS
    print(f"\nscale: 3 replicas healthy in {waited:.0f} s; /me served by {sorted(served_by)}")
    print(f"login buckets by client address: {believed}")
    # Through nginx, the client is the host (the network's gateway), taken from the proxy's
    # X-Forwarded-For; not the proxy itself, and not what the client wrote in that header.
    # Straight to a replica, the client is its peer (127.0.0.1), whatever the header says.
    assert believed == sorted([edge["Gateway"], "127.0.0.1"])


@pytest.mark.parametrize("file", ["compose.yaml", "compose.scale.yaml"])
@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256"])
def test_compose_v2_accepts_each_compose_file_and_refuses_what_it_does_not_know(
    docker: dict[str, Compose | None], tmp_path: Path, algorithm: str, file: str
) -> None:
    """`docker compose config` (v2's own validation, stricter than v1's in places) accepts every
    bake's compose files as generated, and refuses the same file with a `depends_on` condition
    misspelt: the check that would catch a file only v1 tolerates."""
    compose = docker["v2"]
    assert compose is not None
    project = bake(tmp_path, jwt_algorithm=algorithm)
    environment = clean_environment()

    def config(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose.command, "--project-name", "tplconfig", "--file", name, "config", "--quiet"],
            cwd=project, env=environment, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    accepted = config(file)
    assert accepted.returncode == 0, accepted.stderr
    text = (project / file).read_text()
    assert "condition: service_healthy" in text
    (project / "misspelt.yaml").write_text(
        text.replace("condition: service_healthy", "condition: service_healty")
    )
    refused = config("misspelt.yaml")
    assert refused.returncode != 0
    assert "depends_on.redis.condition" in refused.stderr, refused.stderr  # names the field


@pytest.mark.parametrize("algorithm", ["HS256", "ES256"])
def test_compose_v2_accepts_the_tracing_override_over_compose_yaml(
    docker: dict[str, Compose | None], tmp_path: Path, algorithm: str
) -> None:
    """`-f compose.yaml -f compose.tracing.yaml`, as the README runs it, passes v2's own
    validation, and the merge gives the app (and the RS/ES keys step) the `otel` build argument,
    APP_TRACING=otlp and the collector's address. Nothing is built: the collector's image cannot
    be pulled here, and the extra's install is the Dockerfile's `uv sync`, which every other
    scenario runs."""
    compose = docker["v2"]
    assert compose is not None
    project = bake(tmp_path, jwt_algorithm=algorithm)
    files = ["--file", "compose.yaml", "--file", "compose.tracing.yaml"]
    result = subprocess.run(
        [*compose.command, "--project-name", "tplconfig", *files, "config", "--format", "json"],
        cwd=project, env=clean_environment(), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    built = [name for name in ("app", "keys") if name in services]
    assert built == (["app"] if algorithm == "HS256" else ["app", "keys"])
    for name in built:
        assert services[name]["build"]["args"] == {"EXTRA": "otel"}, name
    environment = services["app"]["environment"]
    assert environment["APP_TRACING"] == "otlp"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert services["app"]["depends_on"]["otel-collector"]["condition"] == "service_started"
    assert re.fullmatch(
        r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", services["otel-collector"]["image"]
    )


# The rolling deploy: steady traffic through nginx while the README's commands replace each
# replica with one built from changed code.
ME_CLIENTS = 4  # threads asking GET /me, each with its own login and connection to nginx
DEPLOY_TIMEOUT = 900.0  # a guard against hanging, not a budget
SERVED_WITHIN_SECONDS = 120.0  # likewise: each new replica serves a /me once it is healthy


def readme_commands(project: Path, section: str) -> str:
    """The first `sh` block of a README section, exactly as a user would copy it."""
    readme = (project / "README.md").read_text()
    start = readme.index(f"\n### {section}\n")
    end = readme.find("\n#", start + 1)
    block = re.search(r"```sh\n(.*?)```", readme[start : end if end != -1 else None], re.S)
    assert block is not None, f"no sh block in the README's {section!r}"
    return block[1]


@dataclass
class Traffic:
    """Requests sent from threads until `stop` is set; every answer (or exception) recorded."""

    base_url: str
    stop: threading.Event = field(default_factory=threading.Event)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def record(self, what: str, outcome: str, seconds: float) -> None:
        with self.lock:
            self.answers[what, outcome] += 1
            self.slowest = max(self.slowest, seconds)

    def send(self, what: str, request: Callable[[], httpx.Response]) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = request()
        except httpx.HTTPError as error:
            self.record(what, type(error).__name__, time.monotonic() - started)
            return None
        self.record(what, str(response.status_code), time.monotonic() - started)
        return response

    def start(self, loop: Callable[[httpx.Client], None]) -> None:
        def run() -> None:
            with httpx.Client(base_url=self.base_url, timeout=60) as client:
                while not self.stop.is_set():
                    loop(client)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def failures(self) -> dict[tuple[str, str], int]:
        """Every answer other than a 2xx or a 429 (a rate limit doing its job)."""
        return {
            key: count
            for key, count in self.answers.items()
            if not (key[1].isdigit() and (key[1].startswith("2") or key[1] == "429"))
        }


def login_form(name: str) -> dict[str, str]:
    return {"username": name, "password": PASSWORD}


def steady_traffic(stack: Stack, asker: str, login_user: str, refresher: str) -> Traffic:
    """`ME_CLIENTS` threads asking /me as `asker`, one logging in as `login_user` over and over,
    one refreshing a pair of `refresher`'s over and over (each refresh spends the token before
    it). Three users: a user's 21st login ends its oldest session (APP_MAX_SESSIONS_PER_USER),
    which would end the sessions of the others' tokens."""
    traffic = Traffic(stack.base_url)

    def asking_me(bearer: dict[str, str]) -> Callable[[httpx.Client], None]:
        def ask(client: httpx.Client) -> None:
            traffic.send("GET /me", lambda: client.get("/me", headers=bearer))

        return ask

    for _ in range(ME_CLIENTS):
        login = stack.login(asker)
        assert login.status_code == 200, login.text
        traffic.start(asking_me({"Authorization": f"Bearer {login.json()['access_token']}"}))

    def log_in(client: httpx.Client) -> None:
        traffic.send(
            "POST /auth/token", lambda: client.post("/auth/token", data=login_form(login_user))
        )
        time.sleep(0.2)  # argon2 is meant to be slow: a login every 0.2 s is plenty

    traffic.start(log_in)
    first = stack.login(refresher)
    assert first.status_code == 200, first.text
    refresh_token = [first.json()["refresh_token"]]

    def refresh(client: httpx.Client) -> None:
        response = traffic.send(
            "POST /auth/refresh",
            lambda: client.post("/auth/refresh", json={"refresh_token": refresh_token[0]}),
        )
        if response is not None and response.status_code == 200:
            refresh_token[0] = response.json()["refresh_token"]
        elif response is not None:  # the chain is broken; a fresh one keeps the load steady
            again = stack.login(refresher)
            if again.status_code == 200:
                refresh_token[0] = again.json()["refresh_token"]
        time.sleep(0.05)

    traffic.start(refresh)
    return traffic


def served_me(container_id: str) -> bool:
    """Whether a container's log has a request line of a GET /me answered 200."""
    logs = subprocess.run(
        ["docker", "logs", container_id], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (logs.stdout + logs.stderr).splitlines()
    return any(is_request_line(line.strip(), "GET", "/me", 200) for line in lines)


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "HS256"}, "compose.scale.yaml")], ids=["HS256"], indirect=True
)
def test_rolling_deploy_behind_the_proxy_fails_no_request(stack: Stack) -> None:
    """Three replicas behind nginx under steady traffic (/me from several clients, logins,
    refreshes); the code changes and the README's "Deploying a new version" commands replace
    each replica with one built from it. Every answer is a 2xx or a 429 (no 5xx, no
    connection error), each old replica stopped by itself with status 0 after draining (none
    was killed), and each new replica, on the new image, serves."""
    with (stack.project / ".env").open("a") as env:  # limits far above the test's traffic
        env.write("APP_RATE_LIMIT=100000/minute\nAPP_LOGIN_RATE_LIMIT=100000/minute\n")
    stack.run("up", "-d", "--build", "--scale", "app=3")
    stack.wait_until_healthy(replicas=3)
    wait_for_proxy(stack)
    for name in ("alice", "bob", "carol"):
        stack.create_user(name, "read", "--index", "1")
    old_ids = {container["Id"] for container in stack.containers("app")}
    old_image = {container["Image"] for container in stack.containers("app")}
    module = stack.project / "src" / stack.package / "__init__.py"
    module.write_text(module.read_text() + "# The new version.\n")
    commands = readme_commands(stack.project, "Deploying a new version")

    events = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}",
         "--filter", f"label=com.docker.compose.project={stack.name}",
         "--filter", "type=container", "--filter", "event=die"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    traffic = steady_traffic(stack, asker="alice", login_user="bob", refresher="carol")
    try:
        time.sleep(2)  # traffic before the deploy too
        started = time.monotonic()
        deploy = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", commands],
            cwd=stack.project, env={**stack.env, "COMPOSE_PROJECT_NAME": stack.name},
            capture_output=True, text=True, timeout=DEPLOY_TIMEOUT, check=False,
        )  # fmt: skip
        deployed_in = time.monotonic() - started
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr + stack.logs()
        new = stack.containers("app")
        deadline = time.monotonic() + SERVED_WITHIN_SECONDS
        unserved = {container["Id"] for container in new}
        while unserved and time.monotonic() < deadline:
            unserved = {id_ for id_ in unserved if not served_me(id_)}
            time.sleep(1)
    finally:
        traffic.finish()
        events.terminate()
        died = [json.loads(line) for line in events.communicate(timeout=60)[0].splitlines()]

    total = sum(traffic.answers.values())
    print(
        f"\nrolling deploy of 3 replicas: {deployed_in:.0f} s; {total} requests, "
        f"slowest {traffic.slowest:.2f} s; answers: "
        + ", ".join(
            f"{what} {outcome}: {n}" for (what, outcome), n in sorted(traffic.answers.items())
        )
    )
    assert traffic.failures() == {}, traffic.answers
    assert {what for what, _ in traffic.answers} == {
        "GET /me",
        "POST /auth/token",
        "POST /auth/refresh",
    }
    assert len(new) == 3
    assert not {container["Id"] for container in new} & old_ids  # every replica was replaced
    assert not {container["Image"] for container in new} & old_image  # by the new version
    assert unserved == set(), "new replicas that served no /me"
    exits = sorted(
        (event["Actor"]["Attributes"]["exitCode"], event["id"] in old_ids) for event in died
    )
    assert exits == [("0", True)] * 3, died  # the old ones, each by itself after its drain


@pytest.mark.parametrize(
    "stack", [({"jwt_algorithm": "HS256"}, "compose.yaml")], ids=["HS256"], indirect=True
)
def test_a_redis_restart_logs_everyone_out_and_the_app_carries_on(stack: Stack) -> None:
    """`docker compose restart redis` (compose.yaml's single Redis, no persistence): Redis
    comes back empty, so every access and refresh token gets 401 and everyone logs in again,
    as the README says; users (on their volume) are still there, and the app carries on
    without a restart of its own (same container, no restart counted, ready again)."""
    stack.run("up", "-d", "--build")
    stack.wait_until_healthy()
    stack.create_user("alice", "read")
    pair = stack.login("alice").json()
    assert me_status(stack, pair["access_token"]) == 200
    (app_before,) = stack.containers("app")

    stack.run("restart", "redis")
    stack.wait_until_healthy("redis")
    deadline = time.monotonic() + HEALTHY_WITHIN_SECONDS
    while httpx.get(f"{stack.base_url}/health/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)

    assert me_status(stack, pair["access_token"]) == 401  # the session went with Redis
    refresh = httpx.post(
        f"{stack.base_url}/auth/refresh",
        json={"refresh_token": pair["refresh_token"]},
        timeout=30,
    )
    assert refresh.status_code == 401
    again = stack.login("alice")
    assert again.status_code == 200, again.text
    assert me_status(stack, again.json()["access_token"]) == 200
    (app_after,) = stack.containers("app")
    assert app_after["Id"] == app_before["Id"]
    assert app_after["RestartCount"] == 0
    assert app_after["State"]["StartedAt"] == app_before["State"]["StartedAt"]
