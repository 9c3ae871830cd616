"""The file-backed user store and the `create-user` command that writes it."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.auth.passwords import password_hasher
from {{ cookiecutter.package_name }}.auth.users import FileUserStore, User
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings, get_settings

from .conftest import CHEAP_ARGON2, running
from .helpers import me

PASSWORD = "a long enough passphrase"


def user(name: str, *scopes: str) -> User:
    return User(name=name, password_hash="$argon2id$not-a-real-hash", scopes=frozenset(scopes))


@pytest.mark.anyio
async def test_the_store_round_trips_users(tmp_path: Path) -> None:
    """A user put into the store is read back with its hash and scopes; the file is private."""
    path = tmp_path / "data" / "users.json"
    store = FileUserStore(path)
    assert await store.get("alice") is None
    assert store.put(user("alice", "read", "write")) is True
    assert store.put(user("alice", "read")) is False  # an update, not a new user
    assert await store.get("alice") == user("alice", "read")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in path.parent.iterdir()] == ["users.json"]  # no temp files


@pytest.mark.anyio
async def test_a_disabled_user_stays_disabled_until_enabled(tmp_path: Path) -> None:
    """`create-user` on a disabled user's name replaces password and scopes, not the state;
    a file from before the flag existed reads as everyone enabled."""
    path = tmp_path / "users.json"
    path.write_text(
        json.dumps({"version": 1, "users": {"alice": {"password_hash": "x", "scopes": []}}})
    )
    store = FileUserStore(path)
    assert await store.get("alice") == User(name="alice", password_hash="x", scopes=frozenset())
    assert store.change("alice", lambda found: replace(found, disabled=True)) is True
    assert store.put(user("alice", "read")) is False
    assert await store.get("alice") == replace(user("alice", "read"), disabled=True)
    assert store.change("alice", lambda found: None) is True
    assert store.change("alice", lambda found: found) is False  # no such user: nothing written
    assert await store.get("alice") is None


def test_a_change_holds_the_writers_lock(tmp_path: Path) -> None:
    """Each read-change-write holds an exclusive lock on the file's folder, so a second writer
    waits instead of writing back a copy read before this change."""
    store = FileUserStore(tmp_path / "users.json")
    store.put(user("alice"))

    def try_to_lock(found: User) -> User:
        other = os.open(tmp_path, os.O_RDONLY)  # another open file: another would-be writer
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        return found

    assert store.change("alice", try_to_lock) is True


def test_a_failed_write_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is replaced in one rename: a write that fails midway changes nothing."""
    path = tmp_path / "users.json"
    store = FileUserStore(path)
    store.put(user("alice"))
    before = path.read_bytes()

    def broken_replace(source: str, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(user("bob"))
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["users.json"]


@pytest.mark.anyio
async def test_the_store_sees_changes_made_by_others(tmp_path: Path) -> None:
    """A running store re-reads the file when another writer changes it."""
    path = tmp_path / "users.json"
    running_store, writer = FileUserStore(path), FileUserStore(path)
    assert await running_store.get("alice") is None
    writer.put(user("alice", "read"))
    assert await running_store.get("alice") == user("alice", "read")
    writer.put(user("alice", "admin"))  # same size, possibly the same mtime: the inode differs
    assert await running_store.get("alice") == user("alice", "admin")


@pytest.mark.anyio
async def test_a_broken_file_keeps_the_last_good_users(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand edit that breaks the JSON does not lock everyone out, and is logged once: the
    broken version is not read and logged again on every login."""
    path = tmp_path / "users.json"
    store = FileUserStore(path)
    store.put(user("alice"))
    assert await store.get("alice") is not None
    path.write_text('{"users": ')
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert await store.get("alice") == user("alice")
    assert [record.message for record in caplog.records if "unreadable" in record.message] == [
        f"users file {path} is unreadable; keeping the previous users"
    ]


class MemoryUsers:
    """A `UserStore` of its own, as a database-backed one would be written."""

    def __init__(self, *users: User) -> None:
        self.users = {user.name: user for user in users}

    async def get(self, name: str) -> User | None:
        return self.users.get(name)


@pytest.mark.anyio
async def test_another_user_store_can_replace_the_file(settings: Settings) -> None:
    """`create_app(settings, users=...)` takes any object with an async `get(name)`."""
    password_hash = password_hasher(settings).hash(PASSWORD)
    store = MemoryUsers(User(name="dora", password_hash=password_hash, scopes=frozenset({"read"})))
    async with running(create_app(settings, users=store)) as client:
        form = {"username": "dora", "password": PASSWORD}
        response = await client.post("/auth/token", data=form)
        assert response.status_code == 200
        answer = await me(client, response.json()["access_token"])
        assert answer.json() == {"sub": "dora", "scopes": ["read"]}
    assert not settings.users_file.exists()


def cli_environment(settings: Settings, key_files: dict[str, Path]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("APP_")}
    assert settings.jwt_secret is not None
    env.update(
        APP_JWT_SECRET=settings.jwt_secret.get_secret_value(),
        APP_JWT_PRIVATE_KEY_FILE=str(key_files["private"]),
        APP_JWT_PUBLIC_KEY_FILE=str(key_files["public"]),
        APP_USERS_FILE=str(settings.users_file),
        **{f"APP_{name.upper()}": str(value) for name, value in CHEAP_ARGON2.items()},
    )
    return env


def create_user(
    settings: Settings, key_files: dict[str, Path], *args: str, stdin: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "create-user", *args],
        input=stdin,
        env=cli_environment(settings, key_files),
        cwd=settings.users_file.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.anyio
async def test_create_user_reads_the_password_from_stdin(
    settings: Settings, key_files: dict[str, Path]
) -> None:
    """`create-user` adds a user who can log in to the running service; re-running updates."""
    app = create_app(settings)
    async with running(app) as client:
        result = create_user(settings, key_files, "alice", "--scopes", "read write", stdin=PASSWORD)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("created user alice")
        assert PASSWORD not in result.stdout + result.stderr
        stored = json.loads(settings.users_file.read_text())["users"]["alice"]
        assert stored["scopes"] == ["read", "write"]
        assert stored["password_hash"].startswith("$argon2id$")
        assert stored["password_hash"] not in result.stdout + result.stderr

        form = {"username": "alice", "password": PASSWORD}
        response = await client.post("/auth/token", data=form)
        assert response.status_code == 200
        answer = await me(client, response.json()["access_token"])
        assert answer.json() == {"sub": "alice", "scopes": ["read", "write"]}

        result = create_user(
            settings, key_files, "alice", "--scopes", "read", stdin="another long passphrase\n"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("updated the password and scopes of user alice")
        assert (await client.post("/auth/token", data=form)).status_code == 401


def test_create_user_refuses_a_short_password_from_stdin(
    settings: Settings, key_files: dict[str, Path]
) -> None:
    """A short password is refused with one clear line and status 2; nothing is written."""
    result = create_user(settings, key_files, "alice", stdin="too short\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: create-user: the password is shorter than 12 characters"
    ]
    assert not settings.users_file.exists()


@pytest.fixture
def cli_settings(
    settings: Settings, key_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Run `main()` in-process, configured through the environment as a real run would be."""
    for name, value in cli_environment(settings, key_files).items():
        if name.startswith("APP_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(settings.users_file.parent)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["alice"], "", "error: create-user: the password is empty"),
        (["alice"], "\n", "error: create-user: the password is empty"),
        (["alice"], "x" * 1025, "error: create-user: the password is longer than 1024 characters"),
        (["{alice}"], PASSWORD, "error: create-user: '{alice}' is not a valid user name"),
        (["a" * 65], PASSWORD, "is not a valid user name"),
        (["alice", "--scopes", 'read "admin"'], PASSWORD, """'"admin"' is not a valid scope"""),
    ],
    ids=["empty", "empty line", "too long", "braces in the name", "name too long", "bad scope"],
)
def test_create_user_refuses_bad_input_with_one_line(
    cli_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    stdin: str,
    message: str,
) -> None:
    """Bad names, scopes and passwords stop `create-user` with status 2 and one line."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["create-user", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert message in captured.err
    assert not cli_settings.users_file.exists()
