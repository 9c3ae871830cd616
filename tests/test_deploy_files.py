"""Dockerfile, compose file and CI files of the generated project, checked with real tools.

No Docker engine is needed: `docker-compose config` validates and interpolates the compose file
(with the bake's `.env`), hadolint lints the Dockerfile, and the CI files are parsed as YAML.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .baking import TOOLS_DIR, bake, clean_environment, run


def compose_config(project: Path, *files: str) -> dict[str, Any]:
    """Compose files (compose.yaml unless named; several are merged in order, as `-f a -f b`)
    as docker-compose resolves them (variables filled from `.env`)."""
    docker_compose = shutil.which("docker-compose")
    assert docker_compose is not None, "docker-compose is missing; `make test` installs it with apt"
    options = [option for file in files or ["compose.yaml"] for option in ("-f", file)]
    result = run([docker_compose, *options, "config"], cwd=project, env=clean_environment())
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def dotenv(project: Path) -> dict[str, str]:
    lines = (project / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture(scope="module", params=["HS256", "ES256"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("deploy"), jwt_algorithm=request.param)


def test_compose_runs_the_app_after_a_healthy_password_protected_redis(project: Path) -> None:
    config = compose_config(project)
    app, redis = config["services"]["app"], config["services"]["redis"]
    password = dotenv(project)["REDIS_PASSWORD"]

    assert app["build"]["context"] == str(project)
    expected_start_order = {"redis": {"condition": "service_healthy"}}
    if (project / "keys").is_dir():
        expected_start_order["keys"] = {"condition": "service_completed_successfully"}
    assert app["depends_on"] == expected_start_order
    assert app["environment"]["APP_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
    assert app["environment"]["APP_HOST"] == "0.0.0.0"  # inside the container only
    assert app["environment"]["APP_USERS_FILE"].startswith("/data/")
    # .env says development (for `make run`); the container runs with production's checks.
    assert dotenv(project)["APP_ENVIRONMENT"] == "development"
    assert app["environment"]["APP_ENVIRONMENT"] == "production"

    assert redis["command"][:3] == ["redis-server", "--requirepass", password]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["environment"]["REDISCLI_AUTH"] == password  # the healthcheck authenticates
    assert "--save" in redis["command"]
    assert "--appendonly" in redis["command"]


@pytest.mark.parametrize("file", ["compose.yaml", "compose.scale.yaml"])
def test_compose_publishes_only_on_loopback(project: Path, file: str) -> None:
    config = compose_config(project, file)
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_compose_keeps_users_on_a_named_volume(project: Path) -> None:
    config = compose_config(project)
    volumes = [str(volume) for volume in config["services"]["app"]["volumes"]]
    assert "users" in config["volumes"]
    assert any(volume.startswith("users:/data") for volume in volumes), volumes


def test_compose_hands_the_key_pair_to_the_app_user_alone(project: Path) -> None:
    """RS/ES: the app never bind-mounts the owner-only ./keys (its uid could not read it); a
    one-shot `keys` service copies it into a volume for the image's uid, without network."""
    if not (project / "keys").is_dir():
        assert "keys" not in compose_config(project)["services"]
        return
    app_uid = next(
        rest.split("=", 1)[1]
        for name, rest in dockerfile_instructions(project)
        if name == "ARG" and rest.startswith("APP_UID=")
    )
    for file in ("compose.yaml", "compose.scale.yaml"):
        services = compose_config(project, file)["services"]
        app, keys = services["app"], services["keys"]
        assert "keys:/app/keys:ro" in [str(volume) for volume in app["volumes"]]
        assert not any(str(volume).startswith(str(project)) for volume in app["volumes"])
        assert [str(volume) for volume in keys["volumes"]] == [
            f"{project / 'keys'}:/host-keys:ro",
            "keys:/keys:rw",
        ]
        shell, options, script = keys["command"]
        assert (shell, options) == ("sh", "-ec")  # -e: a failed copy fails the step
        install = f"install -m 0400 -o {app_uid} -g {app_uid} -t /keys"
        assert f"{install} /host-keys/jwt-private.pem /host-keys/jwt-public.pem;" in script
        # The previous public key (after rotate-keys) is copied when it exists, else removed.
        assert script.startswith("rm -f /keys/jwt-public.previous.pem;")
        assert "if [ -f /host-keys/jwt-public.previous.pem ]; then" in script
        assert f"{install} /host-keys/jwt-public.previous.pem; fi" in script
        assert keys["user"] == "0:0"  # only to read the host's files and hand them over
        assert keys["network_mode"] == "none"
        assert keys["read_only"] is True
        assert keys["cap_drop"] == ["ALL"]
        assert sorted(keys["cap_add"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
        assert keys["security_opt"] == ["no-new-privileges:true"]
        assert keys["image"] == app["image"]  # the app's own image: nothing else to fetch


def test_compose_refuses_to_start_without_the_redis_password(project: Path) -> None:
    """Without .env, docker-compose stops with a message naming REDIS_PASSWORD."""
    (project / ".env").rename(project / ".env.saved")
    try:
        docker_compose = shutil.which("docker-compose")
        assert docker_compose is not None
        result = subprocess.run(
            [docker_compose, "config"],
            cwd=project,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert "set REDIS_PASSWORD in .env" in result.stderr
    finally:
        (project / ".env.saved").rename(project / ".env")


def dockerfile_instructions(project: Path) -> list[tuple[str, str]]:
    text = (project / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def test_dockerfile_passes_hadolint(project: Path) -> None:
    run([TOOLS_DIR / "hadolint", "Dockerfile"], cwd=project)


def test_dockerfile_is_multi_stage_non_root_with_a_liveness_healthcheck(project: Path) -> None:
    instructions = dockerfile_instructions(project)
    stages = [rest for name, rest in instructions if name == "FROM"]
    assert len(stages) == 2
    users = [rest for name, rest in instructions if name == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = [rest for name, rest in instructions if name == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/health/live" in healthchecks[0]
    command = json.loads(next(rest for name, rest in reversed(instructions) if name == "CMD"))
    package = json.loads((project / ".cookiecutter.json").read_text())["package_name"]
    assert command == ["python", "-m", package, "serve"]


def test_dockerfile_fetches_no_buildkit_frontend(project: Path) -> None:
    """A `# syntax=` line makes BuildKit fetch its frontend from a registry at every build."""
    assert not re.search(r"^#\s*syntax\s*=", (project / "Dockerfile").read_text(), re.MULTILINE)


def test_nothing_secret_is_sent_to_the_docker_build(project: Path) -> None:
    ignored = (project / ".dockerignore").read_text().splitlines()
    assert {".env", "keys/"} <= set(ignored)
    copied = [rest for name, rest in dockerfile_instructions(project) if name in {"COPY", "ADD"}]
    assert not any(".env" in rest or "keys" in rest for rest in copied)


def test_github_workflow_runs_lint_types_tests_and_audit_with_redis(tmp_path: Path) -> None:
    project = bake(tmp_path, ci="github")
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    job = workflow["jobs"]["test"]
    assert job["services"]["redis"]["image"].startswith("redis:")
    assert "redis-cli ping" in job["services"]["redis"]["options"]
    assert job["env"]["REDIS_URL"].startswith("redis://localhost:6379")
    commands = [step.get("run", "") for step in job["steps"]]
    for expected in ("make install", "make lint", "make test", "make audit"):
        assert expected in commands
    python = next(
        step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python")
    )
    assert python["with"]["python-version"] == "3.14"  # the default answer


def test_ci_runs_the_newest_offered_python_when_asked(tmp_path: Path) -> None:
    """3.15 is a final release: setup-python finds it without allowing pre-releases, and the
    official image has a plain `3.15-slim` tag (a release candidate's would be `3.15-rc-slim`)."""
    github = bake(tmp_path / "github", ci="github", python_version="3.15")
    workflow = yaml.safe_load((github / ".github" / "workflows" / "ci.yml").read_text())
    (setup,) = [
        step
        for step in workflow["jobs"]["test"]["steps"]
        if step.get("uses", "").startswith("actions/setup-python")
    ]
    assert setup["with"]["python-version"] == "3.15"
    assert "allow-prereleases" not in setup["with"]
    gitlab = bake(tmp_path / "gitlab", ci="gitlab", python_version="3.15")
    assert yaml.safe_load((gitlab / ".gitlab-ci.yml").read_text())["test"]["image"] == (
        "python:3.15-slim"
    )


def test_gitlab_pipeline_runs_lint_types_tests_and_audit_with_redis(tmp_path: Path) -> None:
    project = bake(tmp_path, ci="gitlab", python_version="3.12")
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    job = pipeline["test"]
    assert job["image"] == "python:3.12-slim"
    assert job["services"][0]["name"].startswith("redis:")
    assert job["variables"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "make install" in job["before_script"]
    assert job["script"] == ["make lint", "make test", "make audit"]


def test_scaled_compose_puts_replicas_behind_a_trusted_proxy(project: Path) -> None:
    """compose.scale.yaml: nginx publishes, replicas do not, and the app believes only it."""
    config = compose_config(project, "compose.scale.yaml")
    proxy, app = config["services"]["proxy"], config["services"]["app"]
    assert "ports" not in app  # any number of replicas: none binds a host port
    assert app["expose"] == ["8000"]
    proxy_address = ipaddress.ip_address(proxy["networks"]["edge"]["ipv4_address"])
    subnet = ipaddress.ip_network(config["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    assert proxy_address in subnet
    assert app["environment"]["APP_TRUSTED_PROXIES"] == f"{proxy_address}/32"
    # Docker gives the first container to start (Redis) the first free address: dynamic
    # addresses must come from a range that leaves the proxy's fixed one free.
    dynamic = ipaddress.ip_network(config["networks"]["edge"]["ipam"]["config"][0]["ip_range"])
    assert dynamic.subnet_of(subnet)
    assert proxy_address not in dynamic
    nginx = (project / "deploy" / "nginx.conf").read_text()
    assert "server app:8000 resolve;" in nginx
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx
    # /metrics is scraped from each replica inside, never published through the proxy.
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", nginx)
    # nginx stops reusing an upstream connection before uvicorn would close it.
    nginx_keepalive = int(re.search(r"keepalive_timeout (\d+)s;", nginx)[1])  # type: ignore[index]
    cli = next((project / "src").glob("*/cli/serve.py")).read_text()
    uvicorn_keepalive = int(re.search(r"^KEEP_ALIVE_SECONDS = (\d+)", cli, re.M)[1])  # type: ignore[index]
    assert nginx_keepalive < uvicorn_keepalive
    mounted = [str(volume) for volume in proxy["volumes"]]
    assert any(
        volume.endswith("deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro") for volume in mounted
    )

    # Apart from the proxy setting and the port, the app runs as in compose.yaml.
    single = compose_config(project)["services"]["app"]
    differing = {
        name
        for name in set(single["environment"]) | set(app["environment"])
        if single["environment"].get(name) != app["environment"].get(name)
    }
    # compose.yaml's single replica stops at once on SIGTERM; the replicas drain.
    assert differing == {"APP_TRUSTED_PROXIES", "APP_SHUTDOWN_DRAIN_SECONDS"}
    assert single["environment"]["APP_SHUTDOWN_DRAIN_SECONDS"] == "0"
    assert single["volumes"] == app["volumes"]
    assert single["depends_on"] == app["depends_on"]


def test_compose_tracing_override_builds_the_otel_extra_and_sends_to_a_pinned_collector(
    project: Path,
) -> None:
    """compose.tracing.yaml over compose.yaml: the app's image built with the `otel` extra (under
    a tag of its own, so the default image stays without the SDK), APP_TRACING=otlp, its spans to
    the collector service on its OTLP/HTTP port, the collector's image pinned by version and its
    configuration a receiver on 4318 and the `debug` exporter; nothing else of the app changes."""
    config = compose_config(project, "compose.yaml", "compose.tracing.yaml")
    services = config["services"]
    app, collector = services["app"], services["otel-collector"]
    single = compose_config(project)["services"]["app"]

    assert app["build"]["args"] == {"EXTRA": "otel"}
    assert app["image"] != single["image"]
    if "keys" in services:  # RS/ES: the one-shot keys step runs the same image, one build
        assert services["keys"]["image"] == app["image"]
        assert services["keys"]["build"]["args"] == {"EXTRA": "otel"}
    environment = app["environment"]
    assert environment["APP_TRACING"] == "otlp"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert environment["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert float(environment["OTEL_TRACES_SAMPLER_ARG"]) == 1.0  # unless .env says otherwise
    added = {name for name in environment if environment[name] != single["environment"].get(name)}
    assert added == {
        "APP_TRACING",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }
    assert app["depends_on"] == {
        **single["depends_on"],
        "otel-collector": {"condition": "service_started"},
    }
    assert sorted(map(str, app["volumes"])) == sorted(map(str, single["volumes"]))
    assert app["ports"] == single["ports"]

    # Pinned: a version, never `latest` or a bare name; and reached from inside only.
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+", collector["image"])
    assert "ports" not in collector
    config_file = project / "deploy" / "otel-collector.yaml"
    assert collector["command"] == ["--config=/etc/otelcol-contrib/config.yaml"]
    assert f"{config_file}:/etc/otelcol-contrib/config.yaml:ro" in [
        str(volume) for volume in collector["volumes"]
    ]
    otelcol = yaml.safe_load(config_file.read_text())
    assert otelcol["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert "grpc" not in otelcol["receivers"]["otlp"]["protocols"]  # the app speaks OTLP/HTTP
    assert "debug" in otelcol["exporters"]
    assert otelcol["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "exporters": ["debug"],
    }


def test_dockerfile_installs_an_extra_only_when_asked(project: Path) -> None:
    """`--build-arg EXTRA=otel` adds the extra from the same lock to both `uv sync` steps (a sync
    without it would remove it again); by default (empty) the image has none."""
    instructions = dockerfile_instructions(project)
    assert ("ARG", 'EXTRA=""') in instructions
    syncs = [rest for name, rest in instructions if name == "RUN" and "uv sync" in rest]
    assert len(syncs) == 2
    for sync in syncs:
        assert re.search(r'uv sync --locked [^&]*\$\{EXTRA:\+--extra "\$EXTRA"\}$', sync), sync
    extras = (project / "pyproject.toml").read_text()
    assert re.search(r"^otel = \[", extras, re.M)


def seconds_of(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.M)
    assert found is not None, pattern
    return float(found[1])


def directives(nginx: str, name: str) -> list[str]:
    """The directives of one `location` block of an nginx configuration (no nested blocks),
    comments left out."""
    found = re.search(r"location " + re.escape(name) + r" \{([^}]*)\}", nginx)
    assert found is not None, name
    text = re.sub(r"#[^\n]*", "", found[1])
    return [" ".join(statement.split()) for statement in text.split(";") if statement.strip()]


def test_scaled_compose_follows_replicas_and_lets_them_drain(project: Path) -> None:
    """What a rolling deploy needs (the Docker tests run one): nginx re-resolves the replicas
    through Docker's DNS (a version that has `resolve`), passes failed attempts to the next
    replica (POSTs only on /auth/, and never after a 503), the app drains longer than nginx
    keeps an idle connection, and Docker waits for the drain and the graceful shutdown."""
    config = compose_config(project, "compose.scale.yaml")
    proxy, app = config["services"]["proxy"], config["services"]["app"]
    nginx = (project / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream app \{([^}]*)\}", nginx)
    assert upstream is not None
    assert re.search(r"^\s*zone app \d+k;", upstream[1], re.M)
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=1s ipv6=off;", upstream[1], re.M)
    assert re.search(r"^\s*server app:8000 resolve;", upstream[1], re.M)
    assert re.search(r"^\s*keepalive \d+;", upstream[1], re.M)
    version = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?-alpine", proxy["image"])
    assert version is not None, proxy["image"]
    major, minor, patch = (int(part or 0) for part in version.groups())
    assert (major, minor, patch) >= (1, 27, 3)  # open-source nginx's `resolve` on upstreams

    assert directives(nginx, "/") == [
        "proxy_pass http://app",
        "proxy_next_upstream error timeout http_503",
    ]
    assert directives(nginx, "/auth/") == [
        "proxy_pass http://app",
        "proxy_next_upstream error timeout non_idempotent",
    ]

    package = next((project / "src").glob("*/cli/serve.py")).parent.parent
    settings = (package / "settings.py").read_text()
    cli = (package / "cli" / "serve.py").read_text()
    drain = seconds_of(r"shutdown_drain_seconds: float = Field\(default=(\d+)", settings)
    graceful = seconds_of(r"^GRACEFUL_SHUTDOWN_SECONDS = (\d+)", cli)
    assert "APP_SHUTDOWN_DRAIN_SECONDS" not in app["environment"]  # the default
    assert drain > seconds_of(r"keepalive_timeout (\d+)s;", nginx)
    assert seconds_of(r"^(\d+)s$", app["stop_grace_period"]) >= drain + graceful + 1
