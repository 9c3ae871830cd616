"""Access-token verification, through HTTP on `GET /me`, against a bad-token matrix (RFC 8725).

Every forged token below names a live session, so the token itself is the only reason it can
fail. The control case (`test_the_forger_makes_acceptable_tokens`) proves the forger is right
when nothing is tampered with. The cases that exist depend on the baked algorithm: key
confusion, for example, only means something for RS256 and ES256.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jose import jwk, jws, jwt

from {{ cookiecutter.package_name }}.auth.tokens import CANONICAL_JWS, LEEWAY_SECONDS
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import delete_keys, make_settings
from .helpers import (
    BASE64URL,
    add_user,
    assert_invalid_token,
    assert_only_the_canonical_spelling_verifies,
    bearer,
    login,
    me,
    url_safe_signature,
)
from .keys import expected_kid, write_key_pair

pytestmark = pytest.mark.anyio

ALGORITHM: str = Settings.model_fields["jwt_algorithm"].default
Signer = Callable[[bytes], bytes]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(part: Mapping[str, Any] | bytes) -> bytes:
    return part if isinstance(part, bytes) else json.dumps(part).encode()


def compact(
    header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, sign: Signer
) -> str:
    """A JWS in compact form, with full control over every byte of header and payload."""
    signing_input = f"{b64(encode(header))}.{b64(encode(payload))}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


@functools.cache  # parsing an RSA key takes tens of milliseconds
def key_signer(key_data: str, algorithm: str) -> Signer:
    return jwk.construct(key_data, algorithm).sign


def hmac_signer(secret: bytes, digest: str = "sha256") -> Signer:
    """Raw HMAC, for keys python-jose rightly refuses to use as HMAC secrets (public keys)."""
    return lambda data: hmac.new(secret, data, digest).digest()


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def new_key(algorithm: str) -> str:
    """Fresh key material for `algorithm`: a secret (HS*) or a private PEM (RS*/ES*)."""
    if algorithm.startswith("HS"):
        return secrets.token_urlsafe(48)
    if algorithm.startswith("RS"):
        return private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    curves = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
    return private_pem(ec.generate_private_key(curves[algorithm]))


def public_jwk(key_data: str, algorithm: str) -> dict[str, Any]:
    key = jwk.construct(key_data, algorithm)
    public: dict[str, Any] = (key if algorithm.startswith("HS") else key.public_key()).to_dict()
    return public


@dataclass(frozen=True)
class Forge:
    """Makes tokens for one live session, right in every respect unless told otherwise."""

    settings: Settings
    key_files: dict[str, Path]
    attacker_key: str  # same algorithm as the service, different key
    previous_key: str  # a key the service accepts, but no longer signs with
    sub: str
    sid: str

    @property
    def key(self) -> str:
        """The service's own signing key."""
        if ALGORITHM.startswith("HS"):
            assert self.settings.jwt_secret is not None
            return self.settings.jwt_secret.get_secret_value()
        return self.key_files["private"].read_text()

    @property
    def kid(self) -> str:
        secret = self.settings.jwt_secret.get_secret_value() if self.settings.jwt_secret else ""
        return expected_kid(ALGORITHM, secret, self.key_files["public"])

    @property
    def previous_kid(self) -> str:
        return expected_kid(ALGORITHM, self.previous_key, previous_public_file(self.key_files))

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Good claims; a change to `...` (Ellipsis) removes that claim."""
        now = int(time.time())
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": self.sub,
            "sid": self.sid,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 300,
            "scope": "read",
        }
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not Ellipsis}

    def header(self, **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": ALGORITHM, "typ": "at+jwt", "kid": self.kid}
        header.update(changes)
        return {name: value for name, value in header.items() if value is not Ellipsis}

    def token(
        self,
        *,
        header: Mapping[str, Any] | bytes | None = None,
        claims: Mapping[str, Any] | bytes | None = None,
        sign: Signer | None = None,
    ) -> str:
        return compact(
            self.header() if header is None else header,
            self.claims() if claims is None else claims,
            sign or key_signer(self.key, ALGORITHM),
        )

    def attacker_token(self, **header_changes: Any) -> str:
        return self.token(
            header=self.header(**header_changes), sign=key_signer(self.attacker_key, ALGORITHM)
        )


def previous_public_file(key_files: dict[str, Path]) -> Path:
    """The service's convention: the previous public key next to the current one."""
    return key_files["public"].with_name(key_files["public"].stem + ".previous.pem")


@pytest.fixture(scope="module")
def attacker_key() -> str:
    return new_key(ALGORITHM)


@pytest.fixture(scope="module")
def previous_key() -> str:
    return new_key(ALGORITHM)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory, previous_key: str) -> dict[str, Path]:
    """This module's own key pair, with a previous key beside it (RS256/ES256), as after a
    rotation; the session's key files stay without one."""
    files = write_key_pair(ALGORITHM, tmp_path_factory.mktemp("keys"))
    if not ALGORITHM.startswith("HS"):
        previous_public = jwk.construct(previous_key, ALGORITHM).public_key().to_pem()
        previous_public_file(files).write_bytes(previous_public)
    return files


@pytest.fixture
def settings(
    redis_url: str, key_files: dict[str, Path], previous_key: str, tmp_path: Path
) -> Iterator[Settings]:
    """As conftest's, with a previous key: APP_JWT_PREVIOUS_SECRETS for HS256."""
    previous = [previous_key] if ALGORITHM.startswith("HS") else []
    settings = make_settings(
        redis_url, key_files, users_file=tmp_path / "users.json", jwt_previous_secrets=previous
    )
    yield settings
    delete_keys(redis_url, settings.redis_key_prefix)


@pytest.fixture
async def forge(
    client: httpx.AsyncClient,
    settings: Settings,
    key_files: dict[str, Path],
    attacker_key: str,
    previous_key: str,
) -> Forge:
    """A forger for a session that is really open (a user logged in)."""
    add_user(settings, "alice", scopes=["read"])
    claims = jwt.get_unverified_claims((await login(client, "alice"))["access_token"])
    return Forge(
        settings, key_files, attacker_key, previous_key, sub=claims["sub"], sid=claims["sid"]
    )


# Each case turns a forger into request headers that must earn a 401.
Case = Callable[[Forge], dict[str, str]]


def token_case(make: Callable[[Forge], str]) -> Case:
    return lambda forge: bearer(make(forge))


def tampered(forge: Forge) -> str:
    header, _, signature = forge.token().split(".")
    payload = b64(json.dumps(forge.claims(sub="mallory", scope="admin")).encode())
    return f"{header}.{payload}.{signature}"


def other_alg_header(forge: Forge) -> str:
    """The right key and algorithm, but the header names another one: the allow-list decides."""
    header = forge.header(alg={"HS256": "HS512", "RS256": "RS512", "ES256": "ES384"}[ALGORITHM])
    return forge.token(header=header)


def other_algorithm(forge: Forge) -> str:
    """Same family, stronger hash, and (where the key allows it) the service's own key."""
    algorithm = {"HS256": "HS512", "RS256": "RS512", "ES256": "ES384"}[ALGORITHM]
    key = forge.key if ALGORITHM != "ES256" else new_key(algorithm)
    return forge.token(header=forge.header(alg=algorithm), sign=key_signer(key, algorithm))


def oversized(forge: Forge) -> str:
    """Over the 4096-byte cap, yet signed correctly: refused for its size alone."""
    return forge.token(claims=forge.claims(pad="x" * 5000))


def exp_overflowing(forge: Forge) -> str:
    text = json.dumps(forge.claims(exp=0)).replace('"exp": 0', '"exp": 1e999')
    return forge.token(claims=text.encode())


def now() -> int:
    return int(time.time())


def missing(claim: str) -> Case:
    return token_case(lambda forge: forge.token(claims=forge.claims(**{claim: ...})))


CASES: list[Any] = [
    pytest.param(lambda forge: {"Authorization": "Bearer"}, id="Bearer without a token"),
    pytest.param(lambda forge: {"Authorization": "Bearer "}, id="Bearer with an empty token"),
    pytest.param(lambda forge: {"Authorization": f"Token {forge.token()}"}, id="another scheme"),
    pytest.param(lambda forge: {"Authorization": "Basic YWxpY2U6c2VjcmV0"}, id="basic auth"),
    pytest.param(token_case(lambda forge: "garbage"), id="garbage"),
    pytest.param(token_case(lambda forge: "a.b.c"), id="three garbage segments"),
    pytest.param(token_case(lambda forge: "..."), id="empty segments"),
    pytest.param(token_case(lambda forge: forge.token() + "x"), id="signature with a byte added"),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(alg="none"), sign=lambda _: b"")),
        id="alg none",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(alg="None"), sign=lambda _: b"")),
        id="alg None",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(alg="none"))),
        id="alg none over a genuine signature",
    ),
    pytest.param(token_case(lambda forge: forge.token(header=forge.header(alg=...))), id="no alg"),
    pytest.param(token_case(other_alg_header), id="another alg named over a genuine signature"),
    pytest.param(token_case(lambda forge: forge.attacker_token()), id="wrong key"),
    pytest.param(token_case(tampered), id="tampered payload"),
    pytest.param(token_case(other_algorithm), id="another algorithm of the same family"),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(exp=now() - 3600))),
        id="expired",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(exp=now() - LEEWAY_SECONDS - 5))),
        id="expired just beyond the leeway",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(nbf=now() + 3600))),
        id="nbf in the future",
    ),
    pytest.param(
        token_case(
            lambda forge: forge.token(claims=forge.claims(iat=now() + 3600, exp=now() + 7200))
        ),
        id="iat in the future",
    ),
    *(
        pytest.param(missing(claim), id=f"missing {claim}")
        for claim in ("exp", "iat", "sub", "sid", "iss", "aud", "jti", "scope")
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(iss="https://evil.example"))),
        id="wrong iss",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(aud="another-service"))),
        id="wrong aud",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(aud=["another-service"]))),
        id="aud list without us",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(typ="JWT"))), id="typ JWT"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(typ="refresh+jwt"))),
        id="typ of another token kind",
    ),
    pytest.param(token_case(lambda forge: forge.token(header=forge.header(typ=...))), id="no typ"),
    # Signed with the service's own key: a critical extension we do not understand is enough.
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(crit=["exp"]))), id="crit exp"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(crit=["x-ext"], **{"x-ext": 1}))),
        id="crit extension",
    ),
    pytest.param(token_case(lambda forge: forge.token(header=forge.header(crit=[]))), id="crit []"),
    pytest.param(
        token_case(
            lambda forge: forge.attacker_token(jwk=public_jwk(forge.attacker_key, ALGORITHM))
        ),
        id="jwk header with the attacker's key",
    ),
    pytest.param(
        token_case(lambda forge: forge.attacker_token(jku="https://evil.example/jwks.json")),
        id="jku header",
    ),
    pytest.param(
        token_case(lambda forge: forge.attacker_token(x5u="https://evil.example/cert.pem")),
        id="x5u header",
    ),
    pytest.param(
        token_case(lambda forge: forge.attacker_token(kid="../../../../dev/null")),
        id="kid header",
    ),
    pytest.param(token_case(lambda forge: forge.token(header=forge.header(kid=...))), id="no kid"),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(kid="no-such-key"))),
        id="unknown kid",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(kid=7))), id="kid a number"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(header=forge.header(kid=[forge.kid]))),
        id="kid a list",
    ),
    pytest.param(
        # Well under the token size cap: refused for the kid's length alone.
        token_case(lambda forge: forge.token(header=forge.header(kid="k" * 200))),
        id="kid too long",
    ),
    pytest.param(
        token_case(lambda forge: forge.attacker_token(kid=forge.previous_kid)),
        id="kid of the previous key, signed with another key",
    ),
    pytest.param(
        token_case(
            lambda forge: forge.token(
                header=forge.header(kid=forge.previous_kid), sign=key_signer(forge.key, ALGORITHM)
            )
        ),
        id="kid of the previous key, signed with the current key",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(sign=key_signer(forge.previous_key, ALGORITHM))),
        id="kid of the current key, signed with the previous key",
    ),
    pytest.param(token_case(lambda forge: forge.token(claims=b"[1, 2, 3]")), id="payload array"),
    pytest.param(token_case(lambda forge: forge.token(claims=b'"alice"')), id="payload string"),
    pytest.param(token_case(lambda forge: forge.token(claims=b"\xff\xfe")), id="payload not UTF-8"),
    pytest.param(token_case(lambda forge: forge.token(header=b"[]")), id="header array"),
    pytest.param(
        # Under the size cap: python-jose parses the header before any signature check.
        token_case(
            lambda forge: forge.token(
                header=b"[" * 1500 + b"]" * 1500, claims=b"{}", sign=lambda _: b""
            )
        ),
        id="deeply nested header",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(exp=None))), id="exp null"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(exp=str(now() + 300)))),
        id="exp a string",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(exp=now() + 300.5))),
        id="exp a float",
    ),
    pytest.param(token_case(exp_overflowing), id="exp 1e999"),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(sub=7))), id="sub a number"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(sid=["x"]))), id="sid a list"
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(scope=["read"]))),
        id="scope a list",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(sub="{alice}"))),
        id="sub that is no user name",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(sid="short"))),
        id="sid that is no session id",
    ),
    pytest.param(
        token_case(lambda forge: forge.token(claims=forge.claims(sid="A" * 22))),
        id="sid of no session",
    ),
    pytest.param(token_case(oversized), id="oversized but well signed"),
    pytest.param(
        lambda forge: {"Authorization": "Bearer " + "A" * 1_000_000},
        id="megabyte header",
    ),
]

if ALGORITHM != "HS256":

    def public_key_bytes(forge: Forge, encoding: serialization.Encoding) -> bytes:
        public = serialization.load_pem_public_key(forge.key_files["public"].read_bytes())
        return public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)

    CASES += [
        pytest.param(
            token_case(
                lambda forge: forge.token(
                    header=forge.header(alg="HS256"),
                    sign=hmac_signer(public_key_bytes(forge, serialization.Encoding.PEM)),
                )
            ),
            id="key confusion: HS256 with the public key as PEM",
        ),
        pytest.param(
            token_case(
                lambda forge: forge.token(
                    header=forge.header(alg="HS256"),
                    sign=hmac_signer(public_key_bytes(forge, serialization.Encoding.DER)),
                )
            ),
            id="key confusion: HS256 with the public key as DER",
        ),
    ]


@pytest.mark.parametrize("case", CASES)
async def test_rejects_bad_tokens_with_401(
    client: httpx.AsyncClient, forge: Forge, case: Case
) -> None:
    """It answers 401 with `Bearer error="invalid_token"` and a bland detail, never a 5xx."""
    response = await client.get("/me", headers=case(forge))
    assert_invalid_token(response)


async def test_the_forger_makes_acceptable_tokens(client: httpx.AsyncClient, forge: Forge) -> None:
    """Control: untampered, the forged token is accepted, so each case above fails on its flaw."""
    response = await me(client, forge.token())
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": "alice", "scopes": ["read"]}


async def test_key_headers_never_choose_the_key(client: httpx.AsyncClient, forge: Forge) -> None:
    """`jku`/`x5u`/`jwk` headers on a token signed with the right key are simply ignored: only
    the `kid`, among the service's own keys, picks one."""
    header = forge.header(
        jku="https://evil.example/jwks.json",
        x5u="https://evil.example/cert.pem",
        jwk=public_jwk(forge.attacker_key, ALGORITHM),
    )
    assert (await me(client, forge.token(header=header))).status_code == 200


async def test_tokens_of_the_previous_key_are_accepted(
    client: httpx.AsyncClient, forge: Forge
) -> None:
    """A token signed with the previous key (RS/ES: `<public>.previous.pem`; HS256:
    APP_JWT_PREVIOUS_SECRETS) and naming it is accepted until it expires."""
    header = forge.header(kid=forge.previous_kid)
    token = forge.token(header=header, sign=key_signer(forge.previous_key, ALGORITHM))
    assert (await me(client, token)).status_code == 200


async def test_the_previous_key_never_signs(
    client: httpx.AsyncClient, settings: Settings, forge: Forge
) -> None:
    """New tokens carry the current key's `kid`, whatever previous keys are configured."""
    token = (await login(client, "alice"))["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == forge.kid != forge.previous_kid


async def test_issued_tokens_carry_exactly_the_contract_claims(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """It issues `typ: at+jwt` and the claims iss aud sub sid jti iat exp scope client_id,
    nothing more; a user's token names the public client (RFC 9068, section 2.2)."""
    add_user(settings, "bob", scopes=["write", "read"])
    token = (await login(client, "bob"))["access_token"]
    assert set(jwt.get_unverified_header(token)) == {"alg", "typ", "kid"}
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.get_unverified_claims(token)
    assert set(claims) == {"iss", "aud", "sub", "sid", "jti", "iat", "exp", "scope", "client_id"}
    assert claims["client_id"] == settings.public_client_id == "public"
    assert claims["scope"] == "read write"
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl_seconds
    assert len(base64.urlsafe_b64decode(claims["sid"] + "==")) >= 16  # >= 128 bits


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/me"), ("POST", "/auth/logout"), ("POST", "/auth/logout-all")]
)
async def test_a_request_without_credentials_gets_a_bare_challenge(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """No Authorization header: 401 with `WWW-Authenticate: Bearer` and no error code, since
    there is no token to be invalid (RFC 6750, section 3.1)."""
    response = await client.request(method, path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Not authenticated"}


async def test_only_the_canonical_spelling_of_a_token_is_verified(
    client: httpx.AsyncClient, forge: Forge
) -> None:
    """RFC 7515 allows one spelling of a JWS: base64url without padding, nothing outside the
    alphabet, no unused bit set. Each respelling below gives python-jose alone the very claims
    of the token (so only the spelling check stands in its way), yet gets a 401, and so does
    each malformed variant; the token itself still works."""
    token = next(t for t in (forge.token() for _ in range(100)) if url_safe_signature(t))
    assert (await me(client, token)).status_code == 200
    key = forge.key if ALGORITHM.startswith("HS") else forge.key_files["public"].read_text()
    await assert_only_the_canonical_spelling_verifies(
        client, token, lambda spelling: jws.verify(spelling, key, [ALGORITHM])
    )
    assert (await me(client, token)).status_code == 200


def canonical_segment(segment: str) -> bool:
    """The standard library's word on one segment: it is canonical when it is not empty, holds
    no `+` or `/` (the standard alphabet's, which Python 3.15 deprecates beside `altchars`),
    decodes strictly (alphabet, length, padding) once the padding is added, and encodes back to
    itself."""
    if not segment or not segment.isascii() or "+" in segment or "/" in segment:
        return False
    padded = segment + "=" * (-len(segment) % 4)
    try:
        data = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error:
        return False
    return base64.urlsafe_b64encode(data).decode().rstrip("=") == segment


def canonical(token: str) -> bool:
    segments = token.split(".")
    return len(segments) == 3 and all(canonical_segment(segment) for segment in segments)


def test_the_spelling_rule_agrees_with_strict_base64_for_every_short_tail() -> None:
    """Every segment of one to three characters (the first one fixed: it carries no unused
    bits), after a whole group and alone: the pattern and strict decoding agree on each."""
    tails = [*BASE64URL, *(a + b for a in BASE64URL for b in BASE64URL)]
    tails += ["A" + a + b for a in BASE64URL for b in BASE64URL]
    for tail in tails:
        for segment in (tail, "eyJh" + tail):
            token = f"eyJh.{segment}.AQAB"
            assert bool(CANONICAL_JWS.fullmatch(token)) == canonical(token), token


SEGMENTS = st.one_of(
    st.binary(max_size=12).map(lambda data: base64.urlsafe_b64encode(data).decode().rstrip("=")),
    st.text(BASE64URL, max_size=12),
    st.text(BASE64URL + "=+/ \t.~\u00e9\u00c4", max_size=12),
)


@hypothesis_settings(max_examples=2000, deadline=None, database=None)
@given(st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join))
def test_the_spelling_rule_agrees_with_strict_base64(token: str) -> None:
    assert bool(CANONICAL_JWS.fullmatch(token)) == canonical(token)
