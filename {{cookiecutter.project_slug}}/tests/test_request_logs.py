"""JSON logs of a served process: request lines, request ids and the audit trail.

Everything here reads what `python -m {{ cookiecutter.package_name }} serve` (or `create-user`)
writes with `APP_LOG_FORMAT=json`: one JSON object per line, parsed line by line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.logs import PACKAGE
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .helpers import PASSWORD, add_user, bearer
from .test_processes import Service, environment_for, start_service, stop, wait_until_ready
from .test_users import cli_environment

# Not hexadecimal: a marker like "abc" turns up inside random request ids now and then.
QUERY_SECRET = "query-secret-never-logged"

ACCESS, AUDIT = f"{PACKAGE}.access", f"{PACKAGE}.audit"
REQUEST_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "path"}
REQUEST_FIELDS |= {"status", "duration_ms", "client"}
CONCURRENT_REQUESTS = 200
CONCURRENT_LOGINS = 20


@contextmanager
def json_service(
    settings: Settings,
    redis_url: str,
    key_files: dict[str, Path],
    folder: Path,
) -> Iterator[tuple[Service, Path]]:
    """A ready `serve` process for `settings`, logging JSON to a file."""
    log = folder / "service.log"
    environment = environment_for(settings, redis_url, key_files)
    environment["APP_LOG_FORMAT"] = "json"
    with log.open("w") as output:
        service = start_service(environment, folder, output=output)
    try:
        wait_until_ready(service)
        yield service, log
    finally:
        service.kill()
        delete_keys(redis_url, settings.redis_key_prefix)


def parse(text: str) -> list[dict[str, Any]]:
    """Every line of the output as JSON: a line that does not parse fails the test."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return lines


def request_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == ACCESS]


def test_json_request_lines_carry_their_fields_and_request_ids(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """A request line per request with the contract's fields; a client's well-formed request id
    comes back and is on every line of its request, a malformed one is replaced."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    add_user(settings, "alice")
    with json_service(settings, redis_url, key_files, tmp_path) as (service, log):
        with httpx.Client(base_url=service.url, timeout=10) as http:
            kept = http.get(
                f"/health/live?secret={QUERY_SECRET}", headers={"X-Request-ID": "Ab.9_-z"}
            )
            login = http.post(
                "/auth/token",
                data={"username": "alice", "password": PASSWORD},
                headers={"X-Request-ID": "login-1"},
            )
            malformed = ["has space", "x" * 65, "a/b", "é"]
            replaced = [
                http.get("/me", headers={b"X-Request-ID": value.encode()}) for value in malformed
            ]
            fresh = http.get("/nowhere")
        output = stop(service, log)

    assert kept.headers["x-request-id"] == "Ab.9_-z"
    assert login.status_code == 200, login.text
    assert login.headers["x-request-id"] == "login-1"
    ids = [response.headers["x-request-id"] for response in [*replaced, fresh]]
    assert len(set(ids)) == len(ids), ids
    for request_id in ids:
        assert len(request_id) == 16, request_id
        int(request_id, 16)  # hexadecimal

    lines = parse(output)
    requests = {line["request_id"]: line for line in request_lines(lines)}
    for line in requests.values():
        assert line.keys() >= REQUEST_FIELDS, line
        assert line["client"] == "127.0.0.1"
        assert line["level"] == "INFO"
        assert line["time"].endswith("Z")
        assert isinstance(line["duration_ms"], float)
    health = requests["Ab.9_-z"]
    assert (health["method"], health["path"], health["status"]) == ("GET", "/health/live", 200)
    assert QUERY_SECRET not in output  # the query string is never logged
    assert requests[ids[-1]]["status"] == 404
    for request_id in ids[:-1]:
        assert (requests[request_id]["path"], requests[request_id]["status"]) == ("/me", 401)
    # The login's lines (its audit event and its request line) all carry its id.
    of_login = [line for line in lines if line.get("request_id") == "login-1"]
    assert [line["logger"] for line in of_login] == [AUDIT, ACCESS], of_login
    # Lines outside any request (startup, shutdown) carry none.
    assert all("request_id" in line for line in lines if line["logger"] in (AUDIT, ACCESS))
    assert not [
        line for line in lines if "request_id" in line and line["logger"].startswith("uvicorn")
    ]


def test_concurrent_requests_never_swap_request_ids(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Hundreds of requests at once, each with its own id: every line a request wrote carries
    that request's id, checked by what the line says (its path, or the user who logged in)."""
    settings = make_settings(redis_url, key_files, users_file=tmp_path / "users.json")
    users = [f"user-{number}" for number in range(CONCURRENT_LOGINS)]
    for user in users:
        add_user(settings, user)

    async def run(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            gets = [
                http.get(f"/nowhere-{number}", headers={"X-Request-ID": f"get-{number}"})
                for number in range(CONCURRENT_REQUESTS)
            ]
            logins = [
                http.post(
                    "/auth/token",
                    data={"username": user, "password": PASSWORD},
                    headers={"X-Request-ID": f"login-{user}"},
                )
                for user in users
            ]
            return list(await asyncio.gather(*gets, *logins))

    with json_service(settings, redis_url, key_files, tmp_path) as (service, log):
        responses = asyncio.run(run(service.url))
        output = stop(service, log)

    for response in responses:
        assert response.status_code in (200, 404), response.text
        assert response.headers["x-request-id"] == response.request.headers["x-request-id"]
    lines = parse(output)
    gets = [line for line in request_lines(lines) if line["path"].startswith("/nowhere-")]
    assert len(gets) == CONCURRENT_REQUESTS
    for line in gets:
        assert line["request_id"] == "get-" + line["path"].removeprefix("/nowhere-"), line
    audits = [line for line in lines if line["logger"] == AUDIT]
    assert len(audits) == CONCURRENT_LOGINS
    for line in audits:
        assert line["event"] == "login_succeeded"
        assert line["request_id"] == f"login-{line['sub']}", line


def test_each_audit_event_is_written_once_and_no_secret_is_logged(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> None:
    """Logins (good, bad, unknown name, limited), a refresh, a refresh-token reuse, a logout and
    a logout-all: one audit line each, with the right fields. Nowhere in the whole log: the
    password, the name typed by mistake, any access or refresh token, the hash, the JWT secret."""
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", login_rate_limit="4/minute"
    )
    add_user(settings, "alice")
    mistyped = "my-Secret-Passw0rd!"  # a password typed into the name field
    with json_service(settings, redis_url, key_files, tmp_path) as (service, log):
        first = service.login("alice")
        second_pair = service.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert second_pair.status_code == 200
        reuse = service.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert reuse.status_code == 401
        third = service.login("alice")
        assert (
            service.post("/auth/logout", headers=bearer(third["access_token"])).status_code == 204
        )
        fourth = service.login("alice")
        logout_all = service.post("/auth/logout-all", headers=bearer(fourth["access_token"]))
        assert logout_all.status_code == 204
        statuses = Counter[int]()
        for name in ["alice", mistyped, mistyped, mistyped, mistyped, mistyped]:
            attempt = service.post("/auth/token", data={"username": name, "password": "wrong-pw-1"})
            statuses[attempt.status_code] += 1
        output = stop(service, log)

    assert statuses[401] >= 1, statuses
    assert statuses[429] >= 1, statuses
    audits = [line for line in parse(output) if line["logger"] == AUDIT]
    events = Counter(line["event"] for line in audits)
    assert events == {
        "login_succeeded": 3,
        "refresh_rotated": 1,
        "refresh_reuse_detected": 1,
        "logout": 1,
        "logout_all": 1,
        "login_failed": statuses[401],
        "login_limited": statuses[429],
    }, audits
    for line in audits:
        assert line["client"] == "127.0.0.1"
        assert line["request_id"]
        assert line["level"] == ("WARNING" if line["event"] == "refresh_reuse_detected" else "INFO")
        if line["event"] in ("login_failed", "login_limited"):
            continue
        assert line["sub"] == "alice", line
    failed = [line for line in audits if line["event"] == "login_failed"]
    assert failed[0]["sub"] == "alice"  # an existing account
    assert all("sub" not in line for line in failed[1:])  # a name typed by anyone: not logged

    stored_hash = json.loads(settings.users_file.read_text())["users"]["alice"]["password_hash"]
    secrets = [PASSWORD, mistyped, "wrong-pw-1", stored_hash]
    secrets += [stored_hash.rpartition("$")[2]]  # the hash's digest alone
    assert settings.jwt_secret is not None
    secrets += [settings.jwt_secret.get_secret_value()]
    for pair in (first, second_pair.json(), third, fourth):
        secrets += [pair["access_token"], pair["refresh_token"]]
        secrets += pair["access_token"].split(".")[1:]  # claims and signature
        secrets += [pair["refresh_token"].rpartition(".")[2]]  # the refresh token's secret
    for secret in secrets:
        assert secret not in output, f"a secret is in the log: {secret[:8]}..."


def test_create_user_writes_an_audit_event(settings: Settings, key_files: dict[str, Path]) -> None:
    """`create-user` logs user_created, then user_updated, as JSON on stderr; no password or
    hash."""
    environment = {**cli_environment(settings, key_files), "APP_LOG_FORMAT": "json"}
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.package_name }}", "create-user", "bob"],
            input=PASSWORD,
            env=environment,
            cwd=settings.users_file.parent,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
        (line,) = parse(result.stderr)
        assert line["logger"] == AUDIT
        assert (line["sub"], line["client"]) == ("bob", "cli")
        assert "request_id" not in line
    assert [json.loads(output.splitlines()[-1])["event"] for output in outputs] == [
        "user_created",
        "user_updated",
    ]
    stored_hash = json.loads(settings.users_file.read_text())["users"]["bob"]["password_hash"]
    assert not [output for output in outputs if PASSWORD in output or stored_hash in output]
