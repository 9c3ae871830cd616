"""The hooks' helpers, called directly (the hooks are importable modules)."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hooks import post_gen_project as post
from hooks import pre_gen_project as pre

DEFAULTS = {
    key: value[0] if isinstance(value, list) else value
    for key, value in json.loads(
        (Path(__file__).parent.parent / "cookiecutter.json").read_text()
    ).items()
    if not key.startswith("_")
}
DEFAULTS.update(project_slug="auth-service", package_name="auth_service")


def test_the_default_answers_are_valid() -> None:
    pre.validate(DEFAULTS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("project_name", "", "project_name: must not be empty"),
        ("project_name", 'Say "hi"', "project_name: 'Say \"hi\"' contains a quote"),
        (
            "project_slug",
            "Auth Service",
            "project_slug: 'Auth Service' is not a valid distribution",
        ),
        (
            "project_slug",
            "auth--service",
            "project_slug: 'auth--service' is not a valid distribution",
        ),
        ("project_slug", "9lives", "project_slug: '9lives' is not a valid distribution"),
        ("package_name", "auth-service", "package_name: 'auth-service' is not a Python identifier"),
        ("package_name", "2fa", "package_name: '2fa' is not a Python identifier"),
        ("package_name", "class", "package_name: 'class' is a Python keyword"),
        ("package_name", "match", "package_name: 'match' is a Python keyword"),
        ("package_name", "json", "package_name: 'json' would shadow a module"),
        ("package_name", "redis", "package_name: 'redis' would shadow a module"),
        ("author_email", "nobody", "author_email: 'nobody' is not an email address"),
        (
            "python_version",
            "3.9",
            "python_version: '3.9' is not one of 3.14, 3.15, 3.13, 3.12, 3.11",
        ),
        ("jwt_algorithm", "none", "jwt_algorithm: 'none' is not one of HS256, RS256, ES256"),
        ("jwt_algorithm", "HS512", "jwt_algorithm: 'HS512' is not one of HS256, RS256, ES256"),
        ("access_token_ttl_seconds", "0", "access_token_ttl_seconds: '0' is not a positive"),
        ("access_token_ttl_seconds", "-5", "access_token_ttl_seconds: '-5' is not a positive"),
        ("access_token_ttl_seconds", "15m", "access_token_ttl_seconds: '15m' is not a positive"),
        (
            "access_token_ttl_seconds",
            "604800",
            "access_token_ttl_seconds: 604800 is more than a day",
        ),
        ("access_token_ttl_seconds", "0900", "access_token_ttl_seconds: '0900' is not a positive"),
        (
            "access_token_ttl_seconds",
            "\u00b2",  # SUPERSCRIPT TWO: a digit to str.isdigit, not to int()
            "access_token_ttl_seconds: '\u00b2' is not a positive",
        ),
        ("rate_limit", "100/min", "rate_limit: '100/min' is not a rate; use N/second"),
        ("rate_limit", "0/minute", "rate_limit: '0/minute' is not a rate"),
        (
            "rate_limit",
            "1234567890/minute",
            "rate_limit: '1234567890/minute' is not a rate",
        ),
        ("rate_limit", "100", "rate_limit: '100' is not a rate"),
        ("ci", "jenkins", "ci: 'jenkins' is not one of github, gitlab, none"),
        ("license", "GPL", "license: 'GPL' is not one of MIT, Apache-2.0, Proprietary"),
    ],
)
def test_a_bad_answer_is_named_with_what_is_accepted(field: str, value: str, message: str) -> None:
    """Each bad answer raises one message that starts with the field's name."""
    with pytest.raises(pre.InvalidAnswer) as caught:
        pre.validate({**DEFAULTS, field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_missing_answer_is_named() -> None:
    answers = {key: value for key, value in DEFAULTS.items() if key != "rate_limit"}
    with pytest.raises(pre.InvalidAnswer, match=r"^rate_limit: is missing"):
        pre.validate(answers)


def test_public_answers_drop_private_keys_but_keep_the_template() -> None:
    context = {
        "project_slug": "x",
        "_output_dir": "/home/me",
        "_template": "gh:org/t",
        "__prompts__": {},
    }
    assert post.public_answers(context) == {"project_slug": "x", "_template": "gh:org/t"}


def test_secrets_are_long_and_fresh() -> None:
    first, second = post.new_secret(), post.new_secret()
    assert first != second
    assert len(first) >= 43  # 32 bytes of randomness, base64url: the HS256 minimum


def is_private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256"])
def test_write_secrets(tmp_path: Path, algorithm: str) -> None:
    """`.env` gets real secrets (owner-only); `.env.example` gets placeholders only."""
    post.write_secrets(tmp_path, algorithm)
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    example = (tmp_path / ".env.example").read_text()
    assert is_private(tmp_path / ".env")
    assert len(env["REDIS_PASSWORD"]) >= 43
    assert env["REDIS_PASSWORD"] not in example
    if algorithm == "HS256":
        assert len(env["APP_JWT_SECRET"]) >= 43
        assert env["APP_JWT_SECRET"] not in example
        assert f"APP_JWT_SECRET={post.PLACEHOLDER_SECRET}" in example
        assert not (tmp_path / "keys").exists()
    else:
        private = tmp_path / env["APP_JWT_PRIVATE_KEY_FILE"]
        public = tmp_path / env["APP_JWT_PUBLIC_KEY_FILE"]
        assert is_private(private)
        assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
        assert "PRIVATE KEY" not in example


@pytest.mark.parametrize(
    ("algorithm", "key_class"),
    [("RS256", rsa.RSAPrivateKey), ("ES256", ec.EllipticCurvePrivateKey)],
)
@pytest.mark.parametrize("maker", [post.key_pair_with_cryptography, post.key_pair_with_openssl])
def test_both_key_makers_produce_matching_pem_pairs(
    maker: Callable[[str], tuple[str, str]], algorithm: str, key_class: type
) -> None:
    """`cryptography` or, without it, `openssl` makes a PKCS#8 key and its public half."""
    private_pem, public_pem = maker(algorithm)
    private_key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    public_key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(private_key, key_class)
    assert private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert private_key.public_key() == public_key


def test_without_any_key_maker_the_bake_stops_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_cryptography(algorithm: str) -> tuple[str, str]:
        raise ImportError("cryptography")

    monkeypatch.setattr(post, "key_pair_with_cryptography", no_cryptography)
    monkeypatch.setattr(post.shutil, "which", lambda name: None)
    with pytest.raises(
        post.HookError, match=r"^jwt_algorithm: ES256 needs a key pair.*choose HS256$"
    ):
        post.new_key_pair("ES256")


def test_pruning_keeps_only_the_chosen_ci_and_license(tmp_path: Path) -> None:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".gitlab-ci.yml").write_text("")
    (tmp_path / "licenses").mkdir()
    for name in ("MIT", "Apache-2.0", "Proprietary"):
        (tmp_path / "licenses" / f"{name}.txt").write_text(name)
    post.remove_ci_files(tmp_path, "gitlab")
    post.choose_license(tmp_path, "Apache-2.0")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".gitlab-ci.yml", "LICENSE"]
    assert (tmp_path / "LICENSE").read_text() == "Apache-2.0"


def test_next_steps_are_the_readme_quickstart_after_a_cd(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "# Service\n\n## From zero to a logged-in request\n\nText.\n\n"
        "```sh\nmake install   # a comment\nmake run &\n```\n\n```sh\nnot this\n```\n"
    )
    steps = post.next_steps(tmp_path).splitlines()
    assert steps[1:] == [f"  cd {tmp_path}", "  make install   # a comment", "  make run &"]


def test_next_steps_without_the_quickstart_point_to_the_readme(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Service\n\n```sh\nmake run\n```\n")
    assert post.next_steps(tmp_path).splitlines()[1:] == [
        f"  cd {tmp_path}",
        "  then follow README.md",
    ]
