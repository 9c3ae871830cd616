"""Configuration, read once from the environment (prefix `APP_`) and from `.env`: every setting
with its default and its reason, and the checks that weigh one setting against another. What
each kind of value accepts (a rate, a list, a network, a Redis URL) is `setting_types.py`'s.

Nothing here runs at import time: call `get_settings()` (or build `Settings(...)` in tests)
and hand the result to `create_app`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .rates import Rate
from .setting_types import (
    ClaimNames,
    MediaTypes,
    Networks,
    RateSetting,
    RedisUrl,
    Secrets,
    redis_password,
)

MIN_SECRET_BYTES = 32  # HS256 needs a key at least as long as its hash (RFC 7518, section 3.2)
# The words of `.env.example`'s values: published with every copy of this project, so anyone
# could sign tokens or talk to Redis with them. Refused in every environment.
PLACEHOLDERS = ("change-me", "changeme", "placeholder")
# What else makes a production secret look hand-written rather than random.
WEAK_MARKERS = ("secret", "example")
URL_PATTERN = r"^https?://[^\s]+$"
# A value of APP_JWT_ISSUER that means to be a URL (and must then be a usable issuer URL); any
# other value is an opaque name, as the default (the project slug) is.
URL_LIKE = re.compile(r"^https?:", re.IGNORECASE)
# A client id as tokens carry it in `client_id`, and the name of a service account (a token
# subject, so the shape of a user name: see auth/users.py).
CLIENT_ID = r"^[A-Za-z0-9_.@-]{1,64}$"


class Settings(BaseSettings):
    """Every setting of the service; the README lists them with their meaning."""

    model_config = SettingsConfigDict(
        env_prefix="APP_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "production"] = "development"

    redis_url: RedisUrl = "redis://localhost:6379/0"
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    redis_max_connections: int = Field(default=64, ge=1)
    redis_cluster: bool = False  # Redis Cluster client; APP_REDIS_URL names any one node
    redis_key_prefix: str = Field(default="{{ cookiecutter.project_slug }}", pattern=r"^[A-Za-z0-9_.:-]+$")

    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "{{ cookiecutter.jwt_algorithm }}"
    jwt_secret: SecretStr | None = None
    # HS256 after a rotation: secrets still accepted for verification, never used to sign.
    jwt_previous_secrets: Secrets = ()
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    # An https URL (http in development) makes the issuer discoverable (RFC 8414); see
    # `issuer_url`. Any other text is an opaque name, written into `iss` as it is.
    jwt_issuer: str = Field(default="{{ cookiecutter.project_slug }}", min_length=1)
    jwt_audience: str = Field(default="{{ cookiecutter.project_slug }}", min_length=1)
    access_token_ttl_seconds: int = Field(default={{ cookiecutter.access_token_ttl_seconds }}, gt=0)
    # Remote issuer (resource-server mode): tokens come from another service or an identity
    # provider, verified with the keys it publishes. Setting either one turns the mode on.
    jwt_jwks_url: str | None = Field(default=None, pattern=URL_PATTERN)
    oidc_issuer: str | None = Field(default=None, pattern=URL_PATTERN)
    jwt_jwks_timeout_seconds: float = Field(default=5, gt=0, le=60)  # connect, and each read
    # Remote mode: each token names a session (`sid`) in the shared Redis that must be alive.
    jwt_require_session: bool = True
    # Remote mode: the `typ` values that mark an access token (compared as RFC 7515 says: no
    # case, `application/` optional), whether a token without `typ` is one, and the claims that
    # hold scopes (see auth/remote.py).
    jwt_accepted_types: MediaTypes = ("at+jwt", "jwt")
    jwt_allow_missing_typ: bool = False
    jwt_scope_claims: ClaimNames = ("scope", "scp")

    session_idle_ttl_seconds: int = Field(default=1800, gt=0)
    session_absolute_ttl_seconds: int = Field(default=86400, gt=0)
    # Logging in beyond this many live sessions ends the user's oldest ones.
    max_sessions_per_user: int = Field(default=20, ge=1, le=1000)
    # Live access tokens per service account (each has a session as long as the token); one
    # more ends the oldest. A client that caches its token until it expires, as OAuth clients
    # do, holds one per process: 100 is a fleet of 100 replicas.
    max_tokens_per_client: int = Field(default=100, ge=1, le=1000)
    # The client id written into the tokens of the password grant (RFC 9068 asks for one in
    # every token): the one public client, with no secret (see api/token_endpoint.py).
    public_client_id: str = Field(default="public", pattern=CLIENT_ID)

    # argon2id cost of a password hash: iterations, memory in KiB (64 MiB), lanes. The defaults
    # are argon2-cffi's (RFC 9106, low-memory profile); tests lower them for speed.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    rate_limit: RateSetting = Rate.from_string("{{ cookiecutter.rate_limit }}")
    login_rate_limit: RateSetting = Rate.from_string("5/minute")
    rate_limit_fail_open: bool = False
    trusted_proxies: Networks = ()

    # None: json in production (one object per line, for a log collector), text otherwise.
    log_format: Literal["json", "text"] | None = None

    users_file: Path = Path("data/users.json")
    clients_file: Path = Path("data/clients.json")  # service accounts (auth/clients.py)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # The edge (edge_limits.py). A request head is at most 16 KiB: real clients send it in one
    # packet, and even a 50 kbit/s link sends it in under 3 s, so 10 s refuses no real client
    # while a client that trickles bytes holds a connection for 10 s, not for ever. The same
    # limit applies to a pause in the middle of a body. (nginx allows 60 s; behind the compose
    # proxy the app only ever sees heads nginx has read in full.)
    header_timeout_seconds: float = Field(default=10, gt=0, le=300)
    # Open connections one process keeps; beyond it a new one is answered 503 and closed. Each
    # costs tens of KiB while idle and up to 80 KiB while a request is read (16 KiB head, 64 KiB
    # body): 1000 is about 100 MiB at worst, and `serve` makes sure the process may open that
    # many descriptors. Behind nginx the app sees far fewer (its upstream keeps 32 per replica).
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # After SIGTERM, how long `serve` keeps serving (readiness 503, `Connection: close`) before
    # it stops accepting (shutdown.py): long enough for a balancer to stop choosing it. 5 s is
    # longer than nginx keeps an idle upstream connection (deploy/nginx.conf, 4 s), so by then
    # nginx holds none to this process; 0 stops at once, as a single process with nothing
    # routing around it may.
    shutdown_drain_seconds: float = Field(default=5, ge=0, le=300)
    # GET /metrics (Prometheus); on the app's port, so never publish that port beyond loopback.
    metrics: bool = True
    # /docs, /redoc and /openapi.json. None: on in development, off in production, where the
    # document would show every route and parameter to anyone who can reach the port.
    docs: bool | None = None
    # OpenTelemetry traces over OTLP/HTTP (tracing.py; the `otel` extra): `off`, or `otlp` with
    # the standard OTEL_* variables for the collector's address, the sampler and the resource.
    tracing: Literal["off", "otlp"] = "off"
    # The authenticated subject as `enduser.id` on request spans: off, so a trace store holds
    # no identity unless someone chose that it may.
    tracing_include_subject: bool = False

    @model_validator(mode="before")
    @classmethod
    def _issuer_from_discovery(cls, values: object) -> object:
        """With APP_OIDC_ISSUER, tokens must name that issuer: it is the expected `iss` unless
        APP_JWT_ISSUER says otherwise (an identity provider writes its issuer URL there)."""
        if isinstance(values, dict) and values.get("oidc_issuer") and not values.get("jwt_issuer"):
            return {**values, "jwt_issuer": values["oidc_issuer"]}
        return values

    @property
    def issuer_url(self) -> str | None:
        """APP_JWT_ISSUER when it is a URL (checked by `_check_issuer`): the issuer is then
        discoverable, and its endpoints are built from it. None for an opaque name."""
        return self.jwt_issuer if URL_LIKE.match(self.jwt_issuer) else None

    @property
    def remote_issuer(self) -> bool:
        """Tokens come from elsewhere: no signing keys here, no `/auth/*` routes."""
        return bool(self.jwt_jwks_url or self.oidc_issuer)

    @property
    def logs_as(self) -> Literal["json", "text"]:
        """The log format in use (`APP_LOG_FORMAT`, else by environment)."""
        if self.log_format is not None:
            return self.log_format
        return "json" if self.environment == "production" else "text"

    @property
    def serves_docs(self) -> bool:
        """The API docs and the OpenAPI document are served (`APP_DOCS`, else by environment)."""
        if self.docs is not None:
            return self.docs
        return self.environment != "production"

    @property
    def checks_sessions(self) -> bool:
        """Every request checks the token's session in Redis (always, for our own tokens)."""
        return self.jwt_require_session or not self.remote_issuer

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        if is_placeholder(redis_password(self.redis_url)):
            raise ValueError(
                "APP_REDIS_URL: its password is a placeholder from .env.example; use a random one "
                "(with compose: REDIS_PASSWORD in .env)"
            )
        if self.remote_issuer:
            self._check_remote()
        elif self.jwt_algorithm.startswith("HS"):
            self._check_secret()
        else:
            self._check_key_files()
        if not self.remote_issuer:
            self._check_issuer()
        if self.session_idle_ttl_seconds > self.session_absolute_ttl_seconds:
            raise ValueError(
                "APP_SESSION_IDLE_TTL_SECONDS must not exceed APP_SESSION_ABSOLUTE_TTL_SECONDS"
            )
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise ValueError("APP_ARGON2_MEMORY_KIB must be at least 8 x APP_ARGON2_PARALLELISM")
        if self.tracing == "otlp" and not has_tracing_sdk():
            raise ValueError(
                "APP_TRACING=otlp needs the OpenTelemetry SDK and exporter: install the `otel` "
                "extra (pip install '.[otel]'; make install includes it; for the image, "
                "docker build --build-arg EXTRA=otel, as compose.tracing.yaml does)"
            )
        return self

    def _check_remote(self) -> None:
        if self.jwt_jwks_url and self.oidc_issuer:
            raise ValueError("set APP_JWT_JWKS_URL or APP_OIDC_ISSUER, not both")
        if self.jwt_algorithm.startswith("HS"):
            # A shared secret is not a public key: anyone able to verify could also sign.
            raise ValueError(
                f"APP_JWT_ALGORITHM: {self.jwt_algorithm} cannot verify a remote issuer's tokens; "
                "use RS256 or ES256 with APP_JWT_JWKS_URL or APP_OIDC_ISSUER"
            )

    def _check_issuer(self) -> None:
        """An issuer URL as RFC 8414 (section 2) wants it: https (http only in development, for
        a local second service), a host, no query, no fragment. The metadata's `issuer` and every
        token's `iss` are this text exactly, so it is never rewritten (a trailing `/` stays)."""
        if self.issuer_url is None:
            return
        try:
            parts = urlsplit(self.jwt_issuer)
            host = parts.hostname
        except ValueError:
            host, parts = None, None
        production = self.environment == "production"
        allowed = ("https",) if production else ("https", "http")
        if (
            parts is None
            or not host
            or parts.scheme not in allowed
            or parts.username is not None
            or "#" in self.jwt_issuer
            or "?" in self.jwt_issuer
            or any(character.isspace() for character in self.jwt_issuer)
        ):
            scheme = "https" if production else "https (or, in development, http)"
            raise ValueError(
                f"APP_JWT_ISSUER: an issuer URL must be {scheme} with a host, no user name, "
                "query or fragment, e.g. https://auth.example.com; or a plain name, which is "
                "not discoverable"
            )

    def _check_secret(self) -> None:
        if self.jwt_secret is None or not self.jwt_secret.get_secret_value():
            raise ValueError(
                f"APP_JWT_SECRET is required for {self.jwt_algorithm}; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        self._check_one_secret("APP_JWT_SECRET", self.jwt_secret.get_secret_value())
        for previous in self.jwt_previous_secrets:  # they verify tokens: as strict as the current
            self._check_one_secret("APP_JWT_PREVIOUS_SECRETS", previous.get_secret_value())

    def _check_one_secret(self, name: str, secret: str) -> None:
        if is_placeholder(secret):
            raise ValueError(
                f"{name} is a placeholder from .env.example; generate a secret with "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if self.environment != "production":
            return
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"{name} is shorter than {MIN_SECRET_BYTES} bytes; "
                "production needs a long random secret"
            )
        if any(marker in secret.lower() for marker in WEAK_MARKERS):
            raise ValueError(f"{name} looks like a placeholder; production needs a real one")

    def _check_key_files(self) -> None:
        for name, path in (
            ("APP_JWT_PRIVATE_KEY_FILE", self.jwt_private_key_file),
            ("APP_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
        ):
            if path is None:
                raise ValueError(f"{name} is required for {self.jwt_algorithm}")
            try:  # open it, as the service will: a file it may not read fails here, in one line
                with path.open("rb"):
                    pass
            except OSError as error:
                problem = f"{name}: cannot read {path}: {error.strerror}{_as_whom()}"
                raise ValueError(problem) from None


def is_placeholder(value: str | None) -> bool:
    return value is not None and any(word in value.lower() for word in PLACEHOLDERS)


def _as_whom() -> str:
    """Who could not read a file: in a container, the image's user rather than the host's."""
    return f" (this process runs as uid {os.getuid()})" if hasattr(os, "getuid") else ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once on first use."""
    return Settings()


def has_tracing_sdk() -> bool:
    """The `otel` extra is installed. Looked up, not imported (that is for `tracing.py`); a
    missing parent package makes `find_spec` raise rather than answer None."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:
        return False
