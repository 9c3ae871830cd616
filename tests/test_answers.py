"""One rule, one place: the hook accepts exactly the answers the generated code runs with.

The pre-gen hook runs before the project exists, so it keeps copies of the rules of the
generated code its answers are written into (`Rate`'s pattern, the int literal of a setting's
default); the post-gen hook keeps a copy of the generated key-pair routine. These tests hold each
copy to its original, and bake and serve the bounds of every numeric answer.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hooks import post_gen_project as post
from hooks import pre_gen_project as pre

from .baking import (
    HOST_PYTHON,
    PROJECT_TEMPLATE,
    TEMPLATE_DIR,
    TOOLS_DIR,
    bake,
    clean_environment,
    install_into,
    load_generated_module,
)

PACKAGE_TEMPLATE = TEMPLATE_DIR / PROJECT_TEMPLATE / "src" / "{{cookiecutter.package_name}}"
START_WITHIN_SECONDS = 60  # a ceiling on two shared cores; a service that fails exits at once
PASSWORD = "correct horse battery staple"

# The bounds of every numeric answer, and one value just past each.
SMALLEST = {"access_token_ttl_seconds": "1", "rate_limit": "1/hour"}
LARGEST = {"access_token_ttl_seconds": "86400", "rate_limit": "999999999/second"}
JUST_PAST = [
    ("access_token_ttl_seconds", "0", "access_token_ttl_seconds: '0' is not a positive"),
    ("access_token_ttl_seconds", "86401", "access_token_ttl_seconds: 86401 is more than a day"),
    ("rate_limit", "0/hour", "rate_limit: '0/hour' is not a rate"),
    ("rate_limit", "1000000000/second", "rate_limit: '1000000000/second' is not a rate"),
]


@functools.cache
def template_rates() -> Any:
    """The generated rates.py as the template holds it (it has no Jinja), imported.

    Registered in `sys.modules` before it runs, as an import would: its dataclasses look their
    module up there."""
    spec = importlib.util.spec_from_file_location("template_rates", PACKAGE_TEMPLATE / "rates.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def accepted_by_hook(check: Callable[[str], None], value: str) -> bool:
    try:
        check(value)
    except pre.InvalidAnswer:
        return False
    return True


def test_the_hook_checks_a_rate_with_the_generated_pattern() -> None:
    """The hook's RATE is the generated `Rate`'s RATE_PATTERN, letter for letter."""
    assert pre.RATE.pattern == template_rates().RATE_PATTERN.pattern


@pytest.mark.parametrize(
    "value",
    [
        "1/second",
        "1/hour",
        "100/minute",
        "999999999/second",
        "1000000000/second",
        "1234567890/minute",
        "0/minute",
        "01/minute",
        "-1/minute",
        "1/day",
        "100/min",
        "100",
        "\u0663/second",  # ARABIC-INDIC DIGIT THREE
    ],
)
def test_the_hook_accepts_a_rate_exactly_when_the_generated_rate_does(value: str) -> None:
    """Every rate the hook lets through loads as the service's default, and no other."""
    rates = template_rates()
    try:
        rates.Rate.from_string(value)
    except ValueError:
        generated = False
    else:
        generated = True
    assert accepted_by_hook(lambda text: pre.check_rate("rate_limit", text), value) == generated


def default_from_settings(answer: str) -> int | None:
    """The `access_token_ttl_seconds` default of the generated settings.py rendered with this
    answer, when that line is Python and the default an int its `gt` bound allows, written as
    the answer was (so the README's table and `.cookiecutter.json` show what the service uses);
    None otherwise."""
    template = (PACKAGE_TEMPLATE / "settings.py").read_text(encoding="utf-8")
    (line,) = [
        line.strip()
        for line in template.splitlines()
        if "{{ cookiecutter.access_token_ttl_seconds }}" in line
    ]
    rendered = line.replace("{{ cookiecutter.access_token_ttl_seconds }}", answer)
    try:
        statement = ast.parse(rendered).body[0]
    except SyntaxError:
        return None
    assert isinstance(statement, ast.AnnAssign)
    assert isinstance(statement.value, ast.Call)
    keywords = {keyword.arg: keyword.value for keyword in statement.value.keywords}
    default = keywords["default"]
    lower = ast.literal_eval(keywords["gt"])
    if not isinstance(default, ast.Constant) or type(default.value) is not int:
        return None
    if default.value <= lower or str(default.value) != answer:
        return None
    return default.value


@pytest.mark.parametrize(
    "value",
    [
        *("1", "900", "86400", "86401", "0", "00", "0900", "-1", "+5", "1_000", "1e3", "0x10"),
        *(" 9", "15m", ""),
        "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to Python's parser
        "\u00b2",  # SUPERSCRIPT TWO: a digit to str.isdigit, not to int()
    ],
)
def test_the_hook_accepts_a_token_lifetime_exactly_when_settings_py_does(value: str) -> None:
    """An accepted lifetime is the positive int literal settings.py then holds; the one further
    bound, a day, is the template's own (documented in its README)."""
    generated = default_from_settings(value)
    expected = generated is not None and generated <= pre.MAX_ACCESS_TOKEN_TTL_SECONDS
    assert accepted_by_hook(pre.check_access_token_ttl, value) == expected


def test_the_hook_offers_exactly_the_algorithms_the_settings_accept() -> None:
    settings = (PACKAGE_TEMPLATE / "settings.py").read_text(encoding="utf-8")
    declared = re.search(r"^\s*jwt_algorithm: Literal\[([^\]]*)\]", settings, re.MULTILINE)
    assert declared is not None
    accepted = {ast.literal_eval(part.strip()) for part in declared[1].split(",")}
    offered = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["jwt_algorithm"]
    assert set(pre.CHOICES["jwt_algorithm"]) == set(offered) == accepted


# The bounds, baked and served.


@contextlib.contextmanager
def serve(project: Path, python: Path, environment: dict[str, str]) -> Iterator[str]:
    """`python -m <package> serve` in the bake (its `.env` read as `make run` reads it); yields
    the base URL once `/health/live` answers 200."""
    package = json.loads((project / ".cookiecutter.json").read_text())["package_name"]
    process = subprocess.Popen(
        [str(python), "-m", package, "serve"],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{environment['APP_PORT']}"
    try:
        deadline = time.monotonic() + START_WITHIN_SECONDS
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)
        yield base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize("answers", [SMALLEST, LARGEST], ids=["smallest", "largest"])
def test_the_bounds_of_every_numeric_answer_bake_and_serve(
    answers: dict[str, str], tmp_path: Path, bake_venv: Path
) -> None:
    """Baked with the smallest, or the largest, value of every numeric answer, the service
    starts, serves, and hands out tokens that live as long as the answer says; its per-user
    limit is the answered rate (checked where the token outlives a second request)."""
    project = bake(tmp_path / "bake", python_version=HOST_PYTHON, **answers)
    install_into(bake_venv, project)
    helper: Any = load_generated_module(project, "tests/redis_server.py", "answers_redis_server")
    redis = helper.RedisServer()
    redis.start()
    try:
        check_the_bake_serves(project, answers, bake_venv, redis.url, tmp_path)
    finally:
        redis.close()


def check_the_bake_serves(
    project: Path, answers: dict[str, str], bake_venv: Path, redis_url: str, tmp_path: Path
) -> None:
    package = json.loads((project / ".cookiecutter.json").read_text())["package_name"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = clean_environment(
        APP_REDIS_URL=redis_url, APP_PORT=str(port), APP_USERS_FILE=str(tmp_path / "users.json")
    )
    python = bake_venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", package, "create-user", "alice", "--scopes", "read"],
        cwd=project, env=environment, input=PASSWORD + "\n", text=True, capture_output=True,
        timeout=120, check=True,
    )  # fmt: skip
    limit, period = answers["rate_limit"].split("/")
    seconds = {"second": 1, "minute": 60, "hour": 3600}[period]
    with serve(project, python, environment) as base_url:
        login = httpx.post(
            f"{base_url}/auth/token", data={"username": "alice", "password": PASSWORD}, timeout=30
        )
        assert login.status_code == 200, login.text
        assert login.json()["expires_in"] == int(answers["access_token_ttl_seconds"])
        if answers["access_token_ttl_seconds"] == "1":
            return  # a token of one second may be gone by the next request
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        me = httpx.get(f"{base_url}/me", headers=bearer, timeout=30)
        assert me.status_code == 200, me.text
        assert me.headers["RateLimit-Policy"] == f'"user";q={limit};w={seconds}'


@pytest.mark.parametrize(
    ("field", "value", "message"), JUST_PAST, ids=[f"{f}={v}" for f, v, _ in JUST_PAST]
)
def test_just_past_each_bound_the_bake_stops_with_one_line_naming_the_field(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    """Through the real `cookiecutter` command: one line, naming the field; no project."""
    command = [TOOLS_DIR / "cookiecutter", "--no-input", TEMPLATE_DIR, "--output-dir", tmp_path]
    result = subprocess.run(
        [*map(str, command), f"{field}={value}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    hook_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert hook_lines == [hook_lines[0]], result.stderr
    assert hook_lines[0].startswith(f"error: {message}")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# The first key pair (the post-gen hook) and every later one (`rotate-keys`).


def key_kind(private_pem: str, public_pem: str) -> tuple[str, ...]:
    """What a key pair is: its type and size or curve, and the PEM formats of its two halves."""
    private_key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    public_key = serialization.load_pem_public_key(public_pem.encode())
    assert private_key.public_key() == public_key
    if isinstance(private_key, rsa.RSAPrivateKey):
        kind = ("RSA", str(private_key.key_size), str(private_key.public_key().public_numbers().e))
    else:
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        kind = ("EC", private_key.curve.name)
    return (*kind, private_pem.splitlines()[0], public_pem.splitlines()[0])


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_the_hook_and_the_generated_package_make_key_pairs_of_one_kind(
    algorithm: str, tmp_path: Path, bake_venv: Path
) -> None:
    """`cryptography` or `openssl` in the post-gen hook, and the generated `new_key_pair`
    (rotate-keys): one algorithm, one RSA size or curve, PKCS#8 and SubjectPublicKeyInfo PEM."""
    project = bake(tmp_path, python_version=HOST_PYTHON, jwt_algorithm=algorithm)
    install_into(bake_venv, project)
    package = json.loads((project / ".cookiecutter.json").read_text())["package_name"]
    generated = subprocess.run(
        [
            str(bake_venv / "bin" / "python"),
            "-c",
            f"import json, sys; from {package}.auth.keys import new_key_pair; "
            "print(json.dumps(new_key_pair(sys.argv[1])))",
            algorithm,
        ],
        cwd=project, env=clean_environment(), capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    baked = (
        (project / post.PRIVATE_KEY_FILE).read_text(),
        (project / post.PUBLIC_KEY_FILE).read_text(),
    )
    kinds = {
        "the bake's": key_kind(*baked),
        "cryptography's": key_kind(*post.key_pair_with_cryptography(algorithm)),
        "openssl's": key_kind(*post.key_pair_with_openssl(algorithm)),
        "new_key_pair's": key_kind(*json.loads(generated.stdout)),
    }
    expected = {
        "RS256": ("RSA", str(post.RSA_KEY_BITS), "65537"),
        "ES256": ("EC", "secp256r1"),
    }[algorithm] + ("-----BEGIN PRIVATE KEY-----", "-----BEGIN PUBLIC KEY-----")
    assert kinds == dict.fromkeys(kinds, expected)
