"""The service-account commands, run as an operator runs them, next to a served process on a
real Redis.

`create-client` prints the secret once, on a line of its own; disabling, deleting a client or
rotating its secret ends every live token of that client at once (the next request gets 401),
while other clients carry on. No secret, hash or token reaches the service's log or the
commands' audit lines.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .helpers import PASSWORD, add_user, assert_invalid_token, run_command
from .redis_server import free_port
from .served import Served, serve

SECRET_LINE = re.compile(r"client_secret: ([A-Za-z0-9_-]{43})")


def create(served: Served, name: str, scopes: str = "read") -> str:
    """`create-client`; its secret."""
    result = served.command("create-client", name, "--scopes", scopes)
    assert result.returncode == 0, result.stderr
    return secret_of(result)


def token_response(served: Served, name: str, secret: str) -> httpx.Response:
    form = {"grant_type": "client_credentials"}
    return served.service.post("/auth/token", data=form, auth=(name, secret))


def access(served: Served, name: str, secret: str) -> str:
    response = token_response(served, name, secret)
    assert response.status_code == 200, response.text
    issued: str = response.json()["access_token"]
    return issued


def secret_of(result: subprocess.CompletedProcess[str]) -> str:
    """The secret a command printed: exactly one line of its own, on stdout only."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("client_secret:")]
    assert len(lines) == 1, result.stdout
    match = SECRET_LINE.fullmatch(lines[0])
    assert match is not None, lines[0]
    assert match[1] not in result.stderr
    return match[1]


@pytest.fixture(scope="module")
def served(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One `serve` process for the module's tests, each with clients of its own."""
    with serve(redis_url, key_files, tmp_path_factory.mktemp("client-commands")) as process:
        yield process


def new_name() -> str:
    return f"svc-{secrets.token_hex(4)}"


def assert_tokens_ended(served: Served, tokens: list[str]) -> None:
    for token in tokens:
        assert_invalid_token(served.service.get("/me", token))


def test_create_client_prints_the_secret_once_and_keeps_only_its_hash(served: Served) -> None:
    name, file = new_name(), served.settings.clients_file
    result = served.command("create-client", name, "--scopes", "read write")
    assert result.returncode == 0, result.stderr
    secret = secret_of(result)
    assert result.stdout == (
        f"created client {name} in {file}; scopes: read write\nclient_secret: {secret}\n"
    )
    stored = served.clients()[name]
    assert stored["secret_hash"].startswith("$argon2id$")
    assert secret not in file.read_text()
    token = access(served, name, secret)
    assert served.service.get("/me", token).json() == {"sub": name, "scopes": ["read", "write"]}
    again = served.command("create-client", name)
    assert again.returncode == 2
    assert again.stdout == ""
    assert again.stderr.splitlines() == [
        f"error: create-client: a client named {name!r} exists; rotate-client-secret renews it"
    ]


def test_disable_client_ends_its_tokens_until_enabled(served: Served) -> None:
    name, other = new_name(), new_name()
    secret, other_secret = create(served, name), create(served, other)
    tokens = [access(served, name, secret) for _ in range(3)]
    kept = access(served, other, other_secret)

    result = served.command("disable-client", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"disabled client {name} in {served.settings.clients_file}; ended 3 token(s)\n"
    )
    assert_tokens_ended(served, tokens)
    assert served.service.get("/me", kept).status_code == 200
    assert token_response(served, name, secret).status_code == 401

    result = served.command("enable-client", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"enabled client {name} in {served.settings.clients_file}\n"
    assert_tokens_ended(served, tokens[:1])  # enabling revives no token
    assert served.service.get("/me", access(served, name, secret)).status_code == 200


def test_delete_client_ends_its_tokens_and_removes_it(served: Served) -> None:
    name, other = new_name(), new_name()
    secret, other_secret = create(served, name), create(served, other)
    tokens = [access(served, name, secret) for _ in range(2)]
    kept = access(served, other, other_secret)

    result = served.command("delete-client", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"deleted client {name} from {served.settings.clients_file}; ended 2 token(s)\n"
    )
    assert name not in served.clients()
    assert_tokens_ended(served, tokens)
    assert token_response(served, name, secret).status_code == 401
    assert served.service.get("/me", kept).status_code == 200


def test_rotate_client_secret_prints_a_new_one_and_ends_the_old_tokens(served: Served) -> None:
    name, other = new_name(), new_name()
    old, other_secret = create(served, name), create(served, other)
    tokens = [access(served, name, old) for _ in range(2)]
    kept = access(served, other, other_secret)

    result = served.command("rotate-client-secret", name)
    assert result.returncode == 0, result.stderr
    new = secret_of(result)
    assert new != old
    assert result.stdout == (
        f"rotated the secret of client {name} in {served.settings.clients_file}; "
        f"ended 2 token(s)\nclient_secret: {new}\n"
    )
    assert_tokens_ended(served, tokens)
    assert token_response(served, name, old).status_code == 401
    assert served.service.get("/me", access(served, name, new)).status_code == 200
    assert served.service.get("/me", kept).status_code == 200


def test_list_clients_shows_names_states_and_scopes_but_no_hash(
    served: Served, tmp_path: Path
) -> None:
    clients_file = str(tmp_path / "clients.json")
    Path(clients_file).write_text('{"version": 1, "clients": {}}\n')  # exists, holds none
    empty = served.command("list-clients", APP_CLIENTS_FILE=clients_file)
    assert (empty.returncode, empty.stdout) == (0, f"no clients in {clients_file}\n")
    for name, scopes in (("billing", "read write"), ("cron", "")):
        made = served.command(
            "create-client", name, "--scopes", scopes, APP_CLIENTS_FILE=clients_file
        )
        assert made.returncode == 0, made.stderr
    assert served.command("disable-client", "cron", APP_CLIENTS_FILE=clients_file).returncode == 0
    result = served.command("list-clients", APP_CLIENTS_FILE=clients_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NAME     STATE     SCOPES",
        "billing  enabled   read write",
        "cron     disabled  (none)",
    ]
    assert "$argon2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command",
    ["list-clients", "disable-client", "enable-client", "delete-client", "rotate-client-secret"],
)
def test_a_missing_clients_file_is_one_line_saying_where_it_was_looked_for(
    served: Served, command: str
) -> None:
    """As for users: the line names the absolute path looked at, and nothing is created there
    (`create-client` writes the file)."""
    folder = served.settings.users_file.parent.resolve()  # where `command` runs
    args = [command] if command == "list-clients" else [command, "billing"]
    result = served.command(*args, APP_CLIENTS_FILE="elsewhere/clients.json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"error: {command}: no clients file at {folder / 'elsewhere' / 'clients.json'} "
        "(create-client writes it; run this from the project folder, or set APP_CLIENTS_FILE)"
    ]
    assert not (folder / "elsewhere").exists()


@pytest.mark.parametrize(
    "command", ["disable-client", "enable-client", "delete-client", "rotate-client-secret"]
)
def test_an_unknown_client_is_one_line_and_changes_nothing(served: Served, command: str) -> None:
    create(served, new_name())  # the file exists
    before = served.settings.clients_file.read_bytes()
    result = served.command(command, "nobody")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {command}: no client named 'nobody' in {served.settings.clients_file}"
    ]
    assert served.settings.clients_file.read_bytes() == before


def test_users_and_clients_never_share_a_name(served: Served) -> None:
    """Their sessions are keyed by name: a client named like a user would share the user's
    sessions, and disabling it would log the user out."""
    user, client = new_name(), new_name()
    add_user(served.settings, user)
    create(served, client)
    refused = served.command("create-client", user)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"error: create-client: {user!r} is a user's name; users and clients share names"
    ]
    refused = run_command(
        ["create-user", client], served.environment, served.settings.users_file.parent, PASSWORD
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"error: create-user: {client!r} is a service account's name; users and clients share "
        "names (their sessions would be one)"
    ]
    public = served.command("create-client", served.settings.public_client_id)
    assert public.returncode == 2
    assert "APP_PUBLIC_CLIENT_ID" in public.stderr


@pytest.mark.parametrize("command", ["disable-client", "delete-client", "rotate-client-secret"])
def test_without_redis_the_client_is_changed_and_the_command_fails_until_run_again(
    served: Served, command: str
) -> None:
    """Redis does not answer: the file changes all the same (no new token from now on), the
    command says the tokens could not be ended and exits 1; a rotated secret is printed even
    so, as the file holds only its hash. Running the command again finishes the job."""
    name = new_name()
    secret = create(served, name)
    token = access(served, name, secret)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    result = served.command(command, name, APP_REDIS_URL=nowhere)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].endswith(
        "but could not end their sessions: Redis did not answer (ConnectionError); "
        f"run {command} again once it does"
    )
    if command == "rotate-client-secret":
        secret = secret_of(result)  # the new one, the only copy
    else:
        assert result.stdout == ""
    assert token_response(served, name, secret).status_code == (
        200 if command == "rotate-client-secret" else 401
    )
    assert served.service.get("/me", token).status_code == 200  # not ended yet

    result = served.command(command, name)
    assert result.returncode == 0, result.stderr
    assert_invalid_token(served.service.get("/me", token))


def test_no_secret_hash_or_token_is_logged(served: Served) -> None:
    """The service's log (grants good and bad) and the commands' output, searched for every
    client secret, its hash and the tokens."""
    name = new_name()
    created = served.command("create-client", name)
    secret = secret_of(created)
    rotated = served.command("rotate-client-secret", name)
    new = secret_of(rotated)
    token = access(served, name, new)
    assert token_response(served, name, secret).status_code == 401  # the old secret: a failure line
    form = {"grant_type": "client_credentials", "client_id": name, "client_secret": new + "x"}
    assert served.service.post("/auth/token", data=form).status_code == 401
    stored_hash = served.clients()[name]["secret_hash"]
    written = served.log.read_text() + created.stderr + rotated.stderr
    for text in (secret, new, new + "x", stored_hash, stored_hash.rpartition("$")[2], token):
        assert text not in written, f"a secret is in the log: {text[:8]}..."
    for part in token.split(".")[1:]:
        assert part not in written
    assert f"client_auth_failed sub={name}" in written  # the events are there, without secrets
    assert f"client_token_issued sub={name}" in written
