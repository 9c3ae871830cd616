"""Key material for tests, made fresh per test session."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def write_key_pair(algorithm: str, folder: Path) -> dict[str, Path]:
    """Write a PEM key pair fitting `algorithm` (any HS* gets one too; it is simply unused)."""
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm.startswith("ES"):
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = {"private": folder / "private.pem", "public": folder / "public.pem"}
    paths["private"].write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["public"].write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


# Computed here from the key's numbers, not with the service's code, so a test comparing the two
# checks the service's `kid`s against RFC 7638 itself.
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(value: int, length: int | None = None) -> str:
    """An unsigned big-endian integer in base64url (RFC 7518, section 6): the shortest form,
    or exactly `length` bytes (EC coordinates)."""
    return b64url(value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big"))


def rfc7638_thumbprint(members: dict[str, str]) -> str:
    """SHA-256 over the required members in lexicographic order, no whitespace (RFC 7638 §3)."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[members["kty"]]
    text = "{" + ",".join(f'"{name}":"{members[name]}"' for name in required) + "}"
    return b64url(hashlib.sha256(text.encode()).digest())


def public_members(public_pem: bytes) -> dict[str, str]:
    """The required JWK members of a PEM public key (RSA or P-256)."""
    public = serialization.load_pem_public_key(public_pem)
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": b64url_int(numbers.n), "e": b64url_int(numbers.e)}
    assert isinstance(public, ec.EllipticCurvePublicKey)
    point = public.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url_int(point.x, 32), "y": b64url_int(point.y, 32)}


def expected_kid(algorithm: str, secret: str, public_file: Path) -> str:
    """The `kid` the service must put on tokens signed with `secret` (HS*) or this key pair."""
    if algorithm.startswith("HS"):
        digest = hmac.new(secret.encode(), b"kid", hashlib.sha256).digest()
        return b64url(digest)[:22]
    return rfc7638_thumbprint(public_members(public_file.read_bytes()))
