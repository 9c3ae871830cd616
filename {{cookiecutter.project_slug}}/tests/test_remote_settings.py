"""Remote issuer (resource-server mode), as configured: the settings that turn it on
(`settings.py`).

A remote-mode service has no secret and no key files of its own, verifies with a public-key
algorithm only, takes its keys from one source, and expects the OIDC issuer as `iss` unless told
otherwise. Each test runs for RS256 and ES256 in every bake (`remote_issuer.py`), whatever
algorithm the project was generated with.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.cli.command import describe
from {{ cookiecutter.package_name }}.settings import Settings

from .remote_issuer import Build


def test_remote_mode_needs_no_keys_of_its_own(remote_settings: Build) -> None:
    settings = remote_settings()
    assert settings.remote_issuer
    assert settings.jwt_secret is None
    assert settings.jwt_private_key_file is None


def test_remote_mode_refuses_hmac_in_one_line(remote_settings: Build) -> None:
    with pytest.raises(ValidationError) as caught:
        remote_settings(jwt_algorithm="HS256")
    assert describe(caught.value) == (
        "error: APP_JWT_ALGORITHM: HS256 cannot verify a remote issuer's tokens; "
        "use RS256 or ES256 with APP_JWT_JWKS_URL or APP_OIDC_ISSUER"
    )


def test_one_source_of_keys(remote_settings: Build) -> None:
    with pytest.raises(ValidationError, match="APP_JWT_JWKS_URL or APP_OIDC_ISSUER, not both"):
        remote_settings(oidc_issuer="https://id.example")
    with pytest.raises(ValidationError, match="jwt_jwks_url"):
        remote_settings(jwt_jwks_url="file:///etc/passwd")


def test_the_oidc_issuer_is_the_expected_iss_unless_set(
    remote_settings: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_OIDC_ISSUER", "https://id.example/realms/shop")
    from_env = Settings(_env_file=None, jwt_algorithm="RS256")
    assert from_env.jwt_issuer == "https://id.example/realms/shop"
    monkeypatch.setenv("APP_JWT_ISSUER", "https://id.example/other")
    assert Settings(_env_file=None, jwt_algorithm="RS256").jwt_issuer == "https://id.example/other"
