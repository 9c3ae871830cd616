"""Bodies no client should send, against the served process: a 400 or a 422, never a 500, and
neither the answer nor the process's output repeats what was sent.

FastAPI's own 422 copied the submitted values into the answer; a value that cannot be encoded
(a lone surrogate from a JSON `\\ud800`) turned it into a 500 whose traceback printed the body,
refresh token included, on a route that needs no login. Our first 422 still named every unknown
key it was sent, and listed every problem: 64 KiB of keys made a 660 KiB answer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import running
from .helpers import add_user
from .served import Served, serve
from .test_processes import Service, bearer, new_user, stop

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=x"
# In every body below; it must appear in no answer and no log line.
MARKER = "marker" + secrets.token_hex(8)
# What a 422 may hold, whatever was sent (the README's promise).
MAX_PROBLEMS = 10
MAX_ANSWER_BYTES = 2048
BODY_CAP_BYTES = 64 * 1024  # server.py answers 413 beyond it


@pytest.fixture
def served(redis_url: str, key_files: dict[str, Path], tmp_path: Path) -> Iterator[Served]:
    with serve(
        redis_url, key_files, tmp_path, rate_limit="1000/minute", login_rate_limit="1000/minute"
    ) as process:
        yield process


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


def test_bad_bodies_are_400_or_422_and_echoed_nowhere(served: Served) -> None:
    service = served.service
    for name, (path, content_type, body) in BAD_BODIES.items():
        response = service.post(path, content=body, headers={"Content-Type": content_type})
        assert response.status_code in {400, 422}, (name, response.text)
        assert marker not in response.content, name
        if response.status_code == 422:
            for problem in response.json()["detail"]:
                assert set(problem) == {"loc", "msg", "type"}, name
    output = stop(service, served.log)
    assert MARKER not in output
    assert "Traceback" not in output


def test_a_lone_surrogate_after_a_refresh_token_is_422_and_neither_echoed_nor_logged(
    served: Served,
) -> None:
    service = served.service
    token = service.login(new_user(served.settings))["refresh_token"]
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
    output = stop(service, served.log)
    assert token not in output
    assert "Traceback" not in output


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def assert_holds_none_of(response: httpx.Response, sent: list[str]) -> None:
    """Neither the bytes of the answer nor any string in it holds any of `sent`."""
    answer = list(strings_in(response.json()))
    for text in sent:
        assert json.dumps(text)[1:-1].encode() not in response.content, text
        assert not any(text in string for string in answer), text


def writer(settings: Settings, service: Service) -> str:
    """A fresh user's access token with the `write` scope (POST /items checks the body only after
    the token: without one every body gets 401)."""
    name = f"writer-{secrets.token_hex(4)}"
    add_user(settings, name, scopes=["write"])
    token: str = service.login(name)["access_token"]
    return token


def post_items(service: Service, token: str, body: str | bytes) -> httpx.Response:
    headers = {**bearer(token), "Content-Type": JSON}
    return service.post("/items", content=body, headers=headers)


def test_a_422_names_no_key_it_was_sent(served: Served) -> None:
    """Unknown keys are reported without their names: markup, control characters, a live token."""
    service = served.service
    token = writer(served.settings, service)
    keys = ["<script>alert(1)</script>", "\x00\x1b[31m\r\nX-Injected: 1", token]
    response = post_items(service, token, json.dumps({"text": "ok", **dict.fromkeys(keys, 1)}))
    assert response.status_code == 422, response.text
    assert_holds_none_of(response, keys)
    assert response.json() == {
        "detail": [
            {"loc": ["body"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
        ]
    }


def test_a_body_full_of_unknown_keys_gets_a_short_422(
    served: Served,
) -> None:
    """As many distinct keys as fit under the body cap: the answer stays small and names none."""
    service = served.service
    token = writer(served.settings, service)
    keys: list[str] = []
    while len(json.dumps(dict.fromkeys(keys, 0))) < BODY_CAP_BYTES - 600:
        keys.append(f"<k{len(keys):05d}>")
    body = json.dumps({"text": "ok", **dict.fromkeys(keys, 0)})
    assert 64_000 < len(body) <= BODY_CAP_BYTES
    response = post_items(service, token, body)
    assert response.status_code == 422, response.text
    assert len(response.content) <= MAX_ANSWER_BYTES, len(response.content)
    assert len(response.json()["detail"]) <= MAX_PROBLEMS
    assert_holds_none_of(response, keys[:50])


def test_a_422_keeps_declared_names_and_positions(
    served: Served,
) -> None:
    """A field the schema declares is named, an unknown one is not; a JSON error keeps the
    position (an int) where parsing stopped, and a message that would quote the input is
    replaced by one that does not."""
    service = served.service
    token = writer(served.settings, service)
    response = post_items(service, token, json.dumps({"text": "", f"<{MARKER}>": 1}))
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": [
            {
                "loc": ["body", "text"],
                "msg": "String should have at least 1 character",
                "type": "string_too_short",
            },
            {"loc": ["body"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"},
        ]
    }
    truncated = '{"text": "ok", "' + MARKER
    response = post_items(service, token, truncated)
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["type"] == "json_invalid"
    assert problem["loc"][0] == "body"
    assert all(isinstance(part, int) for part in problem["loc"][1:]), problem
    assert MARKER not in response.text


# A route with what the template's own bodies lack: lists, dicts, a union, a UUID and a validator
# whose message quotes the input. In-process: the served app has no such route.
class Cat(BaseModel):
    kind: Literal["cat"]


class Dog(BaseModel):
    kind: Literal["dog"]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(ge=0)


def refuse(value: str) -> str:
    raise ValueError(f"{value!r} is not a note we take")


class Order(BaseModel):
    parts: list[Part]
    tags: dict[str, int]
    id: UUID
    note: Annotated[str, AfterValidator(refuse)]
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    either: int | list[int]


@pytest.fixture
def orders_app(app: FastAPI) -> FastAPI:
    @app.post("/orders", status_code=204)
    async def add_order(order: Order) -> None:
        del order

    return app


@pytest.mark.anyio
async def test_a_422_of_a_nested_body_keeps_indices_and_drops_the_rest(
    orders_app: FastAPI,
) -> None:
    order = {
        "parts": [{"count": 1}, {"count": -1, f"<{MARKER}>": 1}],
        "tags": {f"<{MARKER}-tag>": "many"},
        "id": f"{MARKER}-not-a-uuid",
        "note": MARKER,
        "pet": {"kind": MARKER},
        "either": MARKER,
    }
    async with running(orders_app) as client:
        response = await client.post("/orders", json=order)
    assert response.status_code == 422, response.text
    assert MARKER not in response.text
    assert response.json()["detail"] == [
        {
            "loc": ["body", "parts", 1, "count"],
            "msg": "Input should be greater than or equal to 0",
            "type": "greater_than_equal",
        },
        {
            "loc": ["body", "parts", 1],
            "msg": "Extra inputs are not permitted",
            "type": "extra_forbidden",
        },
        {
            "loc": ["body", "tags"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        },
        {"loc": ["body", "id"], "msg": "Input should be a valid UUID", "type": "uuid_parsing"},
        {"loc": ["body", "note"], "msg": "Value error", "type": "value_error"},
        {
            "loc": ["body", "pet"],
            "msg": "Input tag does not match any of the expected tags",
            "type": "union_tag_invalid",
        },
        {
            "loc": ["body", "either"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        },
        {"loc": ["body", "either"], "msg": "Input should be a valid list", "type": "list_type"},
    ]


@pytest.mark.anyio
async def test_a_422_lists_at_most_ten_problems(orders_app: FastAPI) -> None:
    """Fifty parts, each wrong in its own place: the first ten are listed."""
    order = {
        "parts": [{"count": -1}] * 50,
        "tags": {},
        "id": str(UUID(int=0)),
        "pet": {"kind": "cat"},
    }
    async with running(orders_app) as client:
        response = await client.post("/orders", json={**order, "note": "x", "either": 1})
    assert response.status_code == 422, response.text
    assert len(response.content) <= MAX_ANSWER_BYTES
    locs = [problem["loc"] for problem in response.json()["detail"]]
    assert locs == [["body", "parts", index, "count"] for index in range(MAX_PROBLEMS)]
