"""The service's own token keys: the one it signs with, and the ones it accepts, by `kid`.

Loaded once, at startup; nothing here does I/O afterwards. Every key has a `kid`:

- RS256/ES256: the RFC 7638 thumbprint of the public key, so any party holding the public key
  computes the same `kid` without being told.
- HS256: see `secret_kid`.

Verification keys are the current one and, after a rotation, the previous one (RS256/ES256: the
public key file `<public stem>.previous.pem` next to APP_JWT_PUBLIC_KEY_FILE; HS256:
APP_JWT_PREVIOUS_SECRETS). `python -m {{ cookiecutter.package_name }} rotate-keys` writes those
files; see `rotate_key_files`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from jose import jwk
from jose.backends.base import Key
from jose.backends.native import HMACKey

from ..settings import Settings

RSA_KEY_BITS = 3072  # as the project's first key pair, made when it was generated
# The members RFC 7638 (section 3.2) hashes for each key type, and the public members a JWKS
# may carry. Nothing else from a key's dictionary is ever published.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}
KID_LENGTH = 22  # characters of base64url (132 bits) for an HMAC secret's kid


class KeyLookup(Protocol):
    """What `TokenVerifier` needs: a key by `kid`, or None. Synchronous and without I/O."""

    def verification_key(self, kid: str) -> Key | None: ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256) of a public JWK given as a dict."""
    members = {name: public[name] for name in THUMBPRINT_MEMBERS[public["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest())


def secret_kid(secret: str) -> str:
    """The `kid` of an HMAC secret: base64url of HMAC-SHA256(secret, "kid"), 22 characters.

    Every token already shows an HMAC-SHA256 output under this secret (its signature); one more,
    over a fixed message, tells an observer nothing new, and no more help in guessing the secret
    than any single token gives. A plain SHA-256 of the secret would be an unkeyed value another
    system might also derive from the same secret (as a key or an id); this one is specific to
    this use. The message has no ".", so it is never a JWS signing input: a `kid` can never be
    passed off as a signature. 22 characters (132 bits) tell a service's few secrets apart.
    """
    digest = hmac.new(secret.encode("utf-8"), b"kid", hashlib.sha256).digest()
    return b64url(digest)[:KID_LENGTH]


def previous_public_key_file(public_file: Path) -> Path:
    """Where the public key replaced by the last rotation is kept: `<stem>.previous.pem` beside
    the current one (`jwt-public.previous.pem` for `jwt-public.pem`)."""
    return public_file.with_name(f"{public_file.stem}.previous.pem")


def public_jwk(key: Key, kid: str, algorithm: str) -> dict[str, Any]:
    """The JWKS entry of a public key: its public members only, plus kid, alg and use."""
    members = key.to_dict()
    entry = {name: members[name] for name in THUMBPRINT_MEMBERS[members["kty"]]}
    return {**entry, "kid": kid, "alg": algorithm, "use": "sig"}


class KeySet:
    """The signing key with its `kid`, and the verification keys by `kid` (current first)."""

    def __init__(
        self,
        signing_key: Key,
        signing_kid: str,
        verification_keys: Mapping[str, Key],
        published: list[dict[str, Any]] | None,
    ) -> None:
        self.signing_key = signing_key
        self.signing_kid = signing_kid
        self._verification_keys = dict(verification_keys)
        # RS256/ES256: serialized once here, since every request for it gets the same bytes.
        self._jwks = None if published is None else {"keys": published}
        self.jwks_json = (
            None if published is None else json.dumps(self._jwks, separators=(",", ":")).encode()
        )

    def verification_key(self, kid: str) -> Key | None:
        return self._verification_keys.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set (RFC 7517); RS256/ES256 only."""
        if self._jwks is None:
            raise ValueError("an HMAC secret is never published")
        return self._jwks


def load_key_set(settings: Settings) -> KeySet:
    """The keys for these settings, read from settings or disk once, at startup."""
    algorithm = settings.jwt_algorithm
    if algorithm.startswith("HS"):
        if settings.jwt_secret is None:
            raise ValueError("APP_JWT_SECRET is required")  # settings already refuse this
        # Current first: a previous secret equal to it changes nothing.
        texts = [settings.jwt_secret, *settings.jwt_previous_secrets]
        keys: dict[str, Key] = {}
        for text in (secret.get_secret_value() for secret in texts):
            # python-jose's own HMAC key on the standard library's `hmac` (one call into C per
            # token), rather than what `jwk.construct` picks when `cryptography` is installed,
            # which builds an HMAC context object per call: 2.6 against 4.5 µs per verify. Both
            # compare signatures in constant time.
            keys.setdefault(secret_kid(text), HMACKey(text, algorithm))
        signing_kid = secret_kid(settings.jwt_secret.get_secret_value())
        return KeySet(keys[signing_kid], signing_kid, keys, published=None)

    private_file, public_file = settings.jwt_private_key_file, settings.jwt_public_key_file
    if private_file is None or public_file is None:
        raise ValueError("both JWT key files are required")  # settings already refuse this
    private_key = jwk.construct(private_file.read_text(encoding="utf-8"), algorithm)
    public_key = jwk.construct(public_file.read_text(encoding="utf-8"), algorithm)
    signing_kid = thumbprint(public_key.to_dict())
    if thumbprint(private_key.public_key().to_dict()) != signing_kid:
        # Signing with one key and checking with another would refuse every token it issues.
        raise ValueError(
            f"APP_JWT_PUBLIC_KEY_FILE ({public_file}) is not the public key of "
            f"APP_JWT_PRIVATE_KEY_FILE ({private_file})"
        )
    public_keys = {signing_kid: public_key}
    previous_file = previous_public_key_file(public_file)
    if previous_file.exists():
        previous_key = jwk.construct(previous_file.read_text(encoding="utf-8"), algorithm)
        public_keys.setdefault(thumbprint(previous_key.to_dict()), previous_key)
    published = [public_jwk(key, kid, algorithm) for kid, key in public_keys.items()]
    return KeySet(private_key, signing_kid, public_keys, published)


def new_key_pair(algorithm: str) -> tuple[str, str]:
    """A fresh (private PEM, public PEM) for RS256 or ES256.

    The project's first pair was made by the template's post-gen hook, with a copy of this
    routine (it ran before this package's dependencies were installed, and can fall back to the
    `openssl` command); the template's tests keep the two making keys of one kind.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem.decode(), public_pem.decode()


def write_atomically(path: Path, text: str, mode: int) -> None:
    """Replace `path` with `text` at once: a reader sees the old file or the new, never half.

    The temporary file is created with `mode` already set (0o600 for a private key: it is never
    readable by others, not even for a moment) in the same directory, so the rename is atomic.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as error:  # name the directory, not a temporary file the user never saw
        raise OSError(error.errno, error.strerror, str(path.parent)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def rotate_key_files(algorithm: str, private_file: Path, public_file: Path) -> tuple[str, str]:
    """Make a new key pair in place of the current one; keep the current public key as the
    previous one (dropping the one before). Returns (new kid, previous kid).

    Order matters if the process dies half-way: the previous key is saved first, so the key
    that signs today's tokens is never lost. A private and public file that do not match
    afterwards stop the service at startup with a clear message, instead of failing every token.
    """
    current_public = public_file.read_text(encoding="utf-8")
    private_file.read_bytes()  # it must exist and be readable, as for the service
    previous_kid = thumbprint(jwk.construct(current_public, algorithm).to_dict())
    private_pem, public_pem = new_key_pair(algorithm)
    new_kid = thumbprint(jwk.construct(public_pem, algorithm).to_dict())
    write_atomically(previous_public_key_file(public_file), current_public, 0o644)
    write_atomically(private_file, private_pem, 0o600)
    write_atomically(public_file, public_pem, 0o644)
    return new_kid, previous_kid
