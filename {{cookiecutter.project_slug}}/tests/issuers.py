"""Signing keys and tokens of a remote issuer, made in the test (for the remote-mode tests).

The `kid` is computed with `tests/keys.py` (RFC 7638 from the key's numbers), not with the
service's code. These keys run in every bake: a remote-mode service verifies RS256 or ES256
whatever algorithm the project was generated with.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from {{ cookiecutter.package_name }}.settings import Settings

from .keys import public_members, rfc7638_thumbprint

REMOTE_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True)
class SigningKey:
    """An issuer's key pair: it signs tokens, and `jwk()` is its entry in the issuer's JWKS."""

    algorithm: str
    private_pem: str
    members: dict[str, str]  # the public JWK's required members

    @property
    def kid(self) -> str:
        return rfc7638_thumbprint(self.members)

    def jwk(self, **changes: Any) -> dict[str, Any]:
        """The public JWK as an issuer publishes it; a change of None drops that member."""
        entry = {**self.members, "kid": self.kid, "alg": self.algorithm, "use": "sig", **changes}
        return {name: value for name, value in entry.items() if value is not None}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """A JWS over `claims`, with `typ: at+jwt` and this key's `kid` unless `header` says
        otherwise (None drops a member)."""
        headers = {"typ": "at+jwt", "kid": self.kid, **header}
        kept = {name: value for name, value in headers.items() if value is not None}
        return jwt.encode(claims, self.private_pem, algorithm=self.algorithm, headers=kept)


def new_signing_key(algorithm: str, rsa_bits: int = 2048) -> SigningKey:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningKey(algorithm, private_pem, public_members(public_pem))


def claims_for(
    settings: Settings, subject: str, session: str | None = None, **changes: Any
) -> dict[str, Any]:
    """The claims an issuer writes for `settings`' audience; a change of None drops a claim."""
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "sid": session,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + 300,
        "scope": "read",
        **changes,
    }
    return {name: value for name, value in claims.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def with_kid(token: str, kid: str) -> str:
    """The token with another `kid` in its header (the signature no longer matches either)."""
    header = base64.urlsafe_b64decode(token.split(".")[0] + "==").decode()
    header = header.replace('"kid":"', f'"kid":"{kid}","x-was":"', 1)
    return b64(header.encode()) + token[token.index(".") :]


def random_kid_tokens(token: str, count: int) -> Iterator[str]:
    """The token under `count` different kids nobody published (no signing needed: with an
    unknown kid the signature is never looked at)."""
    for _ in range(count):
        yield with_kid(token, secrets.token_urlsafe(24))


def bad_signature_tokens(token: str, count: int) -> Iterator[str]:
    """The token, right kid, with `count` different signatures of the right length."""
    head, _, signature = token.rpartition(".")
    size = len(base64.urlsafe_b64decode(signature + "=="))
    for _ in range(count):
        yield f"{head}.{b64(secrets.token_bytes(size))}"
