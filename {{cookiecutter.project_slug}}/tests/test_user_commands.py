"""The user commands, run as an operator runs them, next to a served process on a real Redis.

Disabling, deleting or re-passwording a user ends every session of theirs at once: the next
request with one of their access tokens and the next refresh get 401, while other users carry on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from redis import Redis

from {{ cookiecutter.package_name }}.auth.passwords import password_hasher
from {{ cookiecutter.package_name }}.auth.users import User
from {{ cookiecutter.package_name }}.keyspace import Keyspace
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import running
from .helpers import PASSWORD, add_user, assert_invalid_token, run_command
from .helpers import login as login_in_process
from .redis_server import free_port
from .served import Served, serve
from .test_processes import Service, new_user

NEW_PASSWORD = "a new and long enough passphrase"


@pytest.fixture(scope="module")
def served(
    redis_url: str, key_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One `serve` process for the module's tests, each with users of its own."""
    with serve(redis_url, key_files, tmp_path_factory.mktemp("user-commands")) as process:
        yield process


def refresh(service: Service, pair: dict[str, str]) -> httpx.Response:
    return service.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})


def login(service: Service, name: str, password: str = PASSWORD) -> httpx.Response:
    return service.post("/auth/token", data={"username": name, "password": password})


def refusal(response: httpx.Response) -> tuple[int, object, str]:
    return response.status_code, response.json(), response.headers["WWW-Authenticate"]


def assert_sessions_ended(service: Service, pairs: list[dict[str, str]]) -> None:
    """The access tokens of `pairs` get 401 on the next request, and so do their refreshes."""
    for pair in pairs:
        assert_invalid_token(service.get("/me", pair["access_token"]))
        assert_invalid_token(refresh(service, pair))


def assert_session_lives(service: Service, pair: dict[str, str]) -> None:
    assert service.get("/me", pair["access_token"]).status_code == 200
    assert refresh(service, pair).status_code == 200


def test_disable_user_ends_every_session_and_refuses_logins_until_enabled(
    served: Served,
) -> None:
    service, file = served.service, served.settings.users_file
    alice, bob = new_user(served.settings), new_user(served.settings)
    alice_pairs = [service.login(alice) for _ in range(3)]
    bob_pair = service.login(bob)

    result = served.command("disable-user", alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"disabled user {alice} in {file}; ended 3 session(s)\n"
    assert_sessions_ended(service, alice_pairs)
    assert_session_lives(service, bob_pair)
    # The right password gets the answer of a wrong one: a client learns nothing of the state.
    refused = login(service, alice)
    assert refused.status_code == 401
    assert refusal(refused) == refusal(login(service, alice, "not alice's password"))
    assert served.users()[alice]["disabled"] is True

    result = served.command("enable-user", alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"enabled user {alice} in {file}\n"
    assert login(service, alice).status_code == 200
    assert_sessions_ended(service, alice_pairs[:1])  # enabling revives no session


def test_delete_user_ends_every_session_and_removes_the_user(served: Served) -> None:
    service, file = served.service, served.settings.users_file
    alice, bob = new_user(served.settings), new_user(served.settings)
    alice_pairs = [service.login(alice) for _ in range(2)]
    bob_pair = service.login(bob)

    result = served.command("delete-user", alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"deleted user {alice} from {file}; ended 2 session(s)\n"
    assert alice not in served.users()
    assert_sessions_ended(service, alice_pairs)
    assert login(service, alice).status_code == 401
    assert_session_lives(service, bob_pair)


def test_set_password_reads_stdin_and_ends_every_session(served: Served) -> None:
    service, file = served.service, served.settings.users_file
    alice, bob = new_user(served.settings), new_user(served.settings)
    alice_pairs = [service.login(alice) for _ in range(2)]
    bob_pair = service.login(bob)
    old_hash = served.users()[alice]["password_hash"]

    result = served.command("set-password", alice, stdin=NEW_PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"set a new password for user {alice} in {file}; ended 2 session(s)\n"
    new_hash = served.users()[alice]["password_hash"]
    assert new_hash != old_hash
    for secret in (NEW_PASSWORD, str(new_hash)):
        assert secret not in result.stdout + result.stderr
    assert_sessions_ended(service, alice_pairs)
    assert login(service, alice).status_code == 401  # the old password
    assert login(service, alice, NEW_PASSWORD).status_code == 200
    assert_session_lives(service, bob_pair)


def test_list_users_shows_names_states_and_scopes_but_no_hash(
    served: Served, tmp_path: Path
) -> None:
    users_file = str(tmp_path / "users.json")
    Path(users_file).write_text('{"version": 1, "users": {}}\n')  # exists, holds none
    empty = served.command("list-users", APP_USERS_FILE=users_file)
    assert (empty.returncode, empty.stdout) == (0, f"no users in {users_file}\n")

    for name, scopes in (("carol", "read write"), ("dave", "")):
        added = served.command(
            "create-user", name, "--scopes", scopes, stdin=PASSWORD, APP_USERS_FILE=users_file
        )
        assert added.returncode == 0, added.stderr
    assert served.command("disable-user", "dave", APP_USERS_FILE=users_file).returncode == 0

    result = served.command("list-users", APP_USERS_FILE=users_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "NAME   STATE     SCOPES",
        "carol  enabled   read write",
        "dave   disabled  (none)",
    ]
    assert "$argon2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command", ["list-users", "set-password", "disable-user", "enable-user", "delete-user"]
)
def test_a_missing_users_file_is_one_line_saying_where_it_was_looked_for(
    served: Served, command: str
) -> None:
    """Not "no users", nor "no user named ...": most likely the command ran in the wrong folder
    (the default `data/users.json` is relative), so the line names the absolute path it looked
    at. Nothing is created there."""
    folder = served.settings.users_file.parent.resolve()  # where `command` runs
    args = [command] if command == "list-users" else [command, "alice"]
    result = served.command(*args, stdin=NEW_PASSWORD, APP_USERS_FILE="elsewhere/users.json")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"error: {command}: no users file at {folder / 'elsewhere' / 'users.json'} (create-user "
        "writes it; run this from the project folder, or set APP_USERS_FILE)"
    ]
    assert not (folder / "elsewhere").exists()


def test_a_command_run_outside_the_project_folder_says_it_found_no_env_there(
    served: Served, tmp_path: Path
) -> None:
    """Without `.env` where it runs and without the secret (or key files) in the environment, a
    command says that, naming the folder; "APP_JWT_SECRET is required" would send a user whose
    `.env` is elsewhere off to make a new secret. With a `.env` that lacks it, that line stays."""
    environment = {
        name: value for name, value in served.environment.items() if not name.startswith("APP_JWT_")
    }
    algorithm = Settings.model_fields["jwt_algorithm"].default  # the bake's
    variable = "APP_JWT_SECRET" if algorithm.startswith("HS") else "APP_JWT_PRIVATE_KEY_FILE"
    result = run_command(["list-users"], environment, tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"error: no .env in {tmp_path.resolve()} (run this from the project folder, "
        f"or set {variable})"
    ]

    (tmp_path / ".env").write_text("APP_ENVIRONMENT=development\n")
    result = run_command(["list-users"], environment, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(f"error: {variable} is required for ")


@pytest.mark.parametrize("command", ["set-password", "disable-user", "enable-user", "delete-user"])
def test_an_unknown_user_is_one_line_and_changes_nothing(served: Served, command: str) -> None:
    new_user(served.settings)  # the file exists
    before = served.settings.users_file.read_bytes()
    result = served.command(command, "nobody", stdin=NEW_PASSWORD)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {command}: no user named 'nobody' in {served.settings.users_file}"
    ]
    assert served.settings.users_file.read_bytes() == before


def test_a_refused_new_password_changes_nothing(served: Served) -> None:
    alice = new_user(served.settings)
    pair = served.service.login(alice)
    before = served.settings.users_file.read_bytes()
    result = served.command("set-password", alice, stdin="too short\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: set-password: the password is shorter than 12 characters"
    ]
    assert served.settings.users_file.read_bytes() == before
    assert_session_lives(served.service, pair)


@pytest.mark.parametrize("command", ["disable-user", "delete-user"])
def test_without_redis_the_user_is_disabled_and_the_command_fails_until_run_again(
    served: Served, command: str
) -> None:
    """Redis does not answer: the user is disabled in the file all the same (no login, no
    refresh from now on), the command says the sessions could not be ended and exits 1. Their
    access tokens work until they expire or the command is run again, which finishes the job."""
    service, file = served.service, served.settings.users_file
    alice = new_user(served.settings)
    for_requests, for_refresh = service.login(alice), service.login(alice)

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    result = served.command(command, alice, APP_REDIS_URL=nowhere)
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {command}: disabled user {alice} in {file}"
        + (" (not deleted yet)" if command == "delete-user" else "")
        + ", but could not end their sessions: Redis did not answer (ConnectionError); "
        f"run {command} again once it does"
    ]
    assert result.stderr.splitlines()[-1] == errors[0]  # before it: the audit line
    assert served.users()[alice]["disabled"] is True
    assert login(service, alice).status_code == 401
    assert_invalid_token(refresh(service, for_refresh))
    assert service.get("/me", for_requests["access_token"]).status_code == 200

    result = served.command(command, alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("; ended 1 session(s)\n")
    assert_invalid_token(service.get("/me", for_requests["access_token"]))
    assert (alice in served.users()) is (command == "disable-user")


class ChangingUsers:
    """A user store whose answer changes after the first look, as it does when a user command
    runs while a login is checking the password."""

    def __init__(self, first: User, then: User | None) -> None:
        self.answers = [first, then]

    async def get(self, name: str) -> User | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["disabled", "deleted", "new password"])
async def test_a_user_changed_during_their_login_keeps_no_session(
    settings: Settings, redis: Redis, change: str
) -> None:
    """The commands change the file, then end the sessions. A login that read the user before
    the change and opens its session after the sessions were ended must not keep it."""
    hasher = password_hasher(settings)
    alice = User(name="alice", password_hash=hasher.hash(PASSWORD), scopes=frozenset({"read"}))
    then: User | None = None  # deleted
    if change == "disabled":
        then = replace(alice, disabled=True)
    elif change == "new password":
        then = replace(alice, password_hash=hasher.hash(NEW_PASSWORD))
    async with running(create_app(settings, users=ChangingUsers(alice, then))) as client:
        response = await client.post(
            "/auth/token", data={"username": "alice", "password": PASSWORD}
        )
    assert response.status_code == 401
    assert response.json() == {"detail": "Incorrect username or password"}
    alices_keys = Keyspace(settings.redis_key_prefix).session_prefix("alice") + "*"
    assert list(redis.scan_iter(match=alices_keys)) == []


@pytest.mark.anyio
async def test_a_user_disabled_in_the_file_can_neither_log_in_nor_refresh(
    settings: Settings,
) -> None:
    """A hand edit of the file disables as the command does (the command also ends sessions)."""
    add_user(settings, "alice")
    async with running(create_app(settings)) as client:
        pair = await login_in_process(client, "alice")
        document = json.loads(settings.users_file.read_text())
        document["users"]["alice"]["disabled"] = True
        settings.users_file.write_text(json.dumps(document))
        form = {"username": "alice", "password": PASSWORD}
        assert (await client.post("/auth/token", data=form)).status_code == 401
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
        )
    assert_invalid_token(refreshed)
