"""Key material for tests, made fresh per test session."""

from __future__ import annotations

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
