"""Settings: what the service accepts at startup, and what it refuses."""

from __future__ import annotations

{% if not cookiecutter.jwt_algorithm.startswith("HS") %}import os
{% endif %}from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.cli.command import describe
from {{ cookiecutter.package_name }}.rates import Rate
from {{ cookiecutter.package_name }}.settings import Settings

STRONG_SECRET = "q7Vt0cPz4nRk2mWb9sXe6yHa1uLj5fGd8oTi3vBn0Kw"
PROJECT = Path(__file__).resolve().parents[1]


Build = Callable[..., Settings]


@pytest.fixture
def build(key_files: dict[str, Path]) -> Build:
    """Settings from explicit values only, with a strong secret and the session's key pair."""

    def build(**values: Any) -> Settings:
        values.setdefault("jwt_secret", STRONG_SECRET)
        values.setdefault("jwt_private_key_file", key_files["private"])
        values.setdefault("jwt_public_key_file", key_files["public"])
        return Settings(_env_file=None, **values)

    return build


def test_defaults_match_the_documented_table(build: Build) -> None:
    """It starts from the defaults the README documents."""
    settings = build()
    assert settings.environment == "development"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.redis_timeout_seconds == 0.5
    assert settings.jwt_algorithm == "{{ cookiecutter.jwt_algorithm }}"
    assert settings.jwt_issuer == settings.jwt_audience == "{{ cookiecutter.project_slug }}"
    assert settings.access_token_ttl_seconds == {{ cookiecutter.access_token_ttl_seconds }}
    assert settings.session_idle_ttl_seconds == 1800
    assert settings.session_absolute_ttl_seconds == 86400
    assert settings.rate_limit == Rate.from_string("{{ cookiecutter.rate_limit }}")
    assert settings.login_rate_limit == Rate(limit=5, period_seconds=60)
    assert settings.rate_limit_fail_open is False
    assert settings.trusted_proxies == ()
    assert settings.users_file == Path("data/users.json")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_reads_the_environment_with_the_app_prefix(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads APP_* variables, including comma-separated proxies and rates."""
    monkeypatch.setenv("APP_RATE_LIMIT", "7/second")
    monkeypatch.setenv("APP_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7")
    monkeypatch.setenv("APP_REDIS_TIMEOUT_SECONDS", "1.5")
    settings = build()
    assert settings.rate_limit == Rate(limit=7, period_seconds=1)
    networks = [str(network) for network in settings.trusted_proxies]
    assert networks == ["10.0.0.0/8", "192.168.1.7/32"]
    assert settings.redis_timeout_seconds == 1.5


def test_reads_dot_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_files: dict[str, Path]
) -> None:
    """It reads `.env` in the working directory, as a fresh checkout would."""
    (tmp_path / ".env").write_text(
        f"APP_JWT_SECRET={STRONG_SECRET}\n"
        f"APP_JWT_PRIVATE_KEY_FILE={key_files['private']}\n"
        f"APP_JWT_PUBLIC_KEY_FILE={key_files['public']}\n"
        "APP_PORT=9001\n"
        "UNRELATED=1\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.port == 9001
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == STRONG_SECRET


def test_remote_token_shapes_are_comma_separated_lists(build: Build) -> None:
    settings = build(jwt_accepted_types=" at+jwt , application/jwt", jwt_scope_claims="scp")
    assert settings.jwt_accepted_types == ("at+jwt", "application/jwt")
    assert settings.jwt_scope_claims == ("scp",)
    assert build().jwt_accepted_types == ("at+jwt", "jwt")  # RFC 9068's, and the providers'
    assert build().jwt_scope_claims == ("scope", "scp")
    assert build().jwt_allow_missing_typ is False


def test_the_secret_never_appears_in_its_repr(build: Build) -> None:
    """A logged settings object does not reveal the signing secret."""
    assert STRONG_SECRET not in repr(build())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate_limit": "100/min"}, "is not a rate"),
        ({"login_rate_limit": "0/minute"}, "is not a rate"),
        ({"redis_timeout_seconds": 0}, "greater than 0"),
        ({"trusted_proxies": "10.0.0.0/33"}, "is not an IP address or CIDR network"),
        ({"port": 70000}, "less than or equal to 65535"),
        ({"session_idle_ttl_seconds": 90000}, "must not exceed"),
        ({"environment": "staging"}, "environment"),
        ({"redis_url": "localhost:6379"}, "not a Redis URL"),
        ({"redis_url": "redis://localhost:port/0"}, "not a Redis URL"),
        ({"jwt_accepted_types": "at+jwt, <script>"}, "is not a media type"),
        ({"jwt_scope_claims": "scope, s c p"}, "is not a claim name"),
    ],
)
def test_refuses_bad_values_with_a_clear_message(
    build: Build, values: dict[str, Any], message: str
) -> None:
    """A malformed setting stops startup with a message that names it."""
    with pytest.raises(ValidationError, match=message):
        build(**values)


{% if cookiecutter.jwt_algorithm.startswith("HS") -%}
def test_a_secret_is_required(build: Build) -> None:
    """HS256 without a secret does not start, in any environment."""
    with pytest.raises(ValidationError, match="APP_JWT_SECRET is required"):
        build(jwt_secret="")


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("short-but-random-Zx81", "shorter than 32 bytes"),
        ("my-own-secret-for-this-laptop-Zx81-q7Vt0cPz", "looks like a placeholder"),
    ],
)
def test_production_refuses_weak_secrets(build: Build, secret: str, message: str) -> None:
    """Production refuses a short or hand-written secret; development allows it."""
    with pytest.raises(ValidationError, match=message):
        build(environment="production", jwt_secret=secret)
    assert build(environment="development", jwt_secret=secret).environment == "development"


def test_production_accepts_a_strong_secret(build: Build) -> None:
    assert build(environment="production").environment == "production"


def test_a_rejected_secret_is_never_echoed(build: Build) -> None:
    """The production check's error carries the settings as its input; the CLI's description
    names the variable and leaves the value out."""
    rejected = "short-but-random-Zx81"
    with pytest.raises(ValidationError) as caught:
        build(environment="production", jwt_secret=rejected)
    text = describe(caught.value)
    assert "APP_JWT_SECRET" in text
    assert rejected not in text


def test_previous_secrets_are_comma_separated(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """APP_JWT_PREVIOUS_SECRETS holds the secrets a rotation replaced, comma-separated."""
    monkeypatch.setenv("APP_JWT_PREVIOUS_SECRETS", f"{STRONG_SECRET}a, {STRONG_SECRET}b,")
    previous = build().jwt_previous_secrets
    assert [secret.get_secret_value() for secret in previous] == [
        f"{STRONG_SECRET}a",
        f"{STRONG_SECRET}b",
    ]


@pytest.mark.parametrize(
    ("environment", "secret", "message"),
    [
        ("development", "change-me-to-a-long-random-secret", "is a placeholder"),
        ("production", "short-but-random-Zx81", "is shorter than 32 bytes"),
        ("production", "my-own-secret-for-this-laptop-Zx81-q7Vt0cPz", "looks like a placeholder"),
    ],
)
def test_previous_secrets_are_checked_like_the_secret(
    build: Build, environment: str, secret: str, message: str
) -> None:
    """They still verify tokens, so a weak one is as dangerous as a weak current secret; the
    error names the variable and never echoes the value."""
    with pytest.raises(ValidationError) as caught:
        build(environment=environment, jwt_previous_secrets=[STRONG_SECRET, secret])
    text = describe(caught.value)
    assert text.startswith(f"error: APP_JWT_PREVIOUS_SECRETS {message}")
    assert secret not in text
{%- else -%}
def test_key_files_are_required(build: Build, tmp_path: Path) -> None:
    """{{ cookiecutter.jwt_algorithm }} does not start without both key files."""
    with pytest.raises(ValidationError, match="APP_JWT_PRIVATE_KEY_FILE is required"):
        build(jwt_private_key_file=None)
    with pytest.raises(ValidationError, match=r"cannot read .*missing\.pem: No such file"):
        build(
            jwt_private_key_file=tmp_path / "missing.pem",
            jwt_public_key_file=tmp_path / "missing.pub.pem",
        )


def test_a_key_path_that_cannot_be_opened_is_one_line(build: Build, tmp_path: Path) -> None:
    """The check opens each key file as the service will, so a path it cannot read stops startup
    with one line naming the variable (a container's user denied a host's key file is checked
    for real by the template's Docker tests)."""
    with pytest.raises(ValidationError) as caught:
        build(jwt_public_key_file=tmp_path)  # a directory: it exists, but cannot be read as a key
    assert describe(caught.value).splitlines() == [
        f"error: APP_JWT_PUBLIC_KEY_FILE: cannot read {tmp_path}: Is a directory "
        f"(this process runs as uid {os.getuid()})"
    ]
{%- endif %}


@pytest.mark.parametrize("environment", ["development", "production"])
def test_the_placeholders_of_env_example_are_refused_in_every_environment(
    build: Build, environment: str
) -> None:
    """`.env.example` ships with every copy of the project: a service started with its values
    would accept tokens anyone can sign, or talk to a Redis anyone can log in to."""
    lines = (PROJECT / ".env.example").read_text().splitlines()
    example = dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    password = example["REDIS_PASSWORD"]
    # The URL compose.yaml builds from REDIS_PASSWORD.
    with pytest.raises(ValidationError, match="APP_REDIS_URL: its password is a placeholder"):
        build(environment=environment, redis_url=f"redis://:{password}@redis:6379/0")
{%- if cookiecutter.jwt_algorithm.startswith("HS") %}
    with pytest.raises(ValidationError, match="APP_JWT_SECRET is a placeholder"):
        build(environment=environment, jwt_secret=example["APP_JWT_SECRET"])
{%- endif %}


def test_errors_are_described_by_variable_name(build: Build) -> None:
    """The CLI reports `APP_<NAME>: problem` (for secrets, HS bakes also check no echo)."""
    with pytest.raises(ValidationError) as caught:
        build(rate_limit="lots")
    assert describe(caught.value).startswith("error: APP_RATE_LIMIT:")


def test_a_malformed_redis_url_is_one_line_without_its_password(build: Build) -> None:
    """The URL may carry the password: the message names the variable, never the value."""
    with pytest.raises(ValidationError) as caught:
        build(redis_url="redis://:hunter2-not-echoed@localhost:notaport/0")
    message = describe(caught.value)
    assert message.startswith("error: APP_REDIS_URL: not a Redis URL"), message
    assert "\n" not in message
    assert "hunter2" not in message


TRUSTED_PROXIES_HELP = "use addresses or networks such as 10.0.0.0/8, 192.168.1.7"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR network"),
        ("10.0.0.0/8, proxy.internal", "'proxy.internal' is not an IP address or CIDR network"),
        ("fe80::/129", "'fe80::/129' is not an IP address or CIDR network"),
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    ],
)
def test_a_bad_trusted_proxy_is_one_line(
    build: Build, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """Like every other setting: the variable, the part that is wrong, and what is accepted;
    pydantic's names for its IPv4-or-IPv6 validators stay out."""
    monkeypatch.setenv("APP_TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError) as caught:
        build()
    assert describe(caught.value).splitlines() == [
        f"error: APP_TRUSTED_PROXIES: {problem}; {TRUSTED_PROXIES_HELP}"
    ]
