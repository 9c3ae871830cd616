"""Bodies no client should send, against the served process: a 400 or a 422, never a 500, and
neither the answer nor the process's output repeats what was sent.

FastAPI's own 422 copied the submitted values into the answer; a value that cannot be encoded
(a lone surrogate from a JSON `\\ud800`) turned it into a 500 whose traceback printed the body,
refresh token included, on a route that needs no login.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .test_processes import Service, logged_service, new_user, stop

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=x"
# In every body below; it must appear in no answer and no log line.
MARKER = "marker" + secrets.token_hex(8)


@pytest.fixture
def served(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[Settings, Service, Path]]:
    settings = make_settings(
        redis_url,
        key_files,
        users_file=tmp_path / "users.json",
        rate_limit="1000/minute",
        login_rate_limit="1000/minute",
    )
    try:
        with logged_service(settings, redis_url, key_files, tmp_path) as (service, log):
            yield settings, service, log
    finally:
        delete_keys(redis_url, settings.redis_key_prefix)


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart body with boundary `x`; each part is (Content-Disposition parameters, value)."""
    body = b"".join(
        b"--x\r\nContent-Disposition: form-data; " + header.encode() + b"\r\n\r\n" + value + b"\r\n"
        for header, value in parts
    )
    return body + b"--x--\r\n"


marker = MARKER.encode()
BAD_BODIES = {  # name: (path, content type, body)
    "not UTF-8": ("/auth/refresh", JSON, b'{"refresh_token": "\xff' + marker + b'"}'),
    "UTF-8 surrogate": ("/auth/refresh", JSON, b'{"refresh_token": "\xed\xa0\x80' + marker + b'"}'),
    "a surrogate key": ("/auth/refresh", JSON, b'{"\\udc00": "' + marker + b'"}'),
    "a huge token": ("/auth/refresh", JSON, b'{"refresh_token": "' + marker * 500 + b'"}'),
    "a list": ("/auth/refresh", JSON, b'["' + marker + b'"]'),
    "a list for a token": ("/auth/refresh", JSON, b'{"refresh_token": ["' + marker + b'"]}'),
    "truncated JSON": ("/auth/refresh", JSON, b'{"refresh_token": "' + marker),
    "deeply nested JSON": ("/auth/refresh", JSON, b"[" * 30_000 + marker),
    "text, not UTF-8": ("/auth/refresh", "text/plain", b"\xff" + marker),
    "a huge password": ("/auth/token", FORM, b"username=a&password=" + marker * 100),
    "a login as JSON": ("/auth/token", JSON, b'{"username": "' + marker + b'"}'),
    "a file for a user name": (
        "/auth/token",
        MULTIPART,
        multipart(('name="username"; filename="a"', marker), ('name="password"', marker)),
    ),
    "a huge multipart password": (
        "/auth/token",
        MULTIPART,
        multipart(('name="username"', b"\xff\xfe"), ('name="password"', marker * 100)),
    ),
    "multipart without a boundary": ("/auth/token", "multipart/form-data", b"--x\r\n" + marker),
}


def test_bad_bodies_are_400_or_422_and_echoed_nowhere(
    served: tuple[Settings, Service, Path],
) -> None:
    _, service, log = served
    for name, (path, content_type, body) in BAD_BODIES.items():
        response = service.post(path, content=body, headers={"Content-Type": content_type})
        assert response.status_code in {400, 422}, (name, response.text)
        assert marker not in response.content, name
        if response.status_code == 422:
            for problem in response.json()["detail"]:
                assert set(problem) == {"loc", "msg", "type"}, name
    output = stop(service, log)
    assert MARKER not in output
    assert "Traceback" not in output


def test_a_lone_surrogate_after_a_refresh_token_is_422_and_neither_echoed_nor_logged(
    served: tuple[Settings, Service, Path],
) -> None:
    settings, service, log = served
    token = service.login(new_user(settings))["refresh_token"]
    body = '{"refresh_token": "' + token + '\\ud800"}'
    response = service.post("/auth/refresh", content=body, headers={"Content-Type": JSON})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": [
            {
                "loc": ["body", "refresh_token"],
                "msg": "Input should be a valid string, unable to parse raw data as a unicode "
                "string",
                "type": "string_unicode",
            }
        ]
    }
    # The token is still good: a refused request spent nothing.
    assert service.post("/auth/refresh", json={"refresh_token": token}).status_code == 200
    output = stop(service, log)
    assert token not in output
    assert "Traceback" not in output
