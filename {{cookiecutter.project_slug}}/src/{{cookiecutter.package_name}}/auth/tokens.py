"""Access tokens: signed JWTs with the fewest claims that do the job, and their verification.

A token carries exactly `iss aud sub sid jti iat exp scope client_id` and the header
`typ: at+jwt` (RFC 9068) and `kid`. `client_id` (RFC 9068, section 2.2) is the client the token
was issued to: `APP_PUBLIC_CLIENT_ID` for a user's token (the password and refresh grants), the
service account itself for the client credentials grant.

Verification follows RFC 8725: one algorithm from configuration, the key picked by `kid` from the
service's own key set only (never from `jwk`/`jku`/`x5u`), `iss`/`aud`/`exp`/`iat` required,
explicit typing, no critical header extensions, and every failure reported the same way.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jose import jwt
from jose.exceptions import JOSEError
from jose.utils import base64url_decode

from ..settings import Settings
from .keys import KeyLookup, KeySet, load_key_set
from .sessions import SESSION_ID_PATTERN
from .users import USERNAME_PATTERN

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, RFC 9068 section 2.1)
MAX_TOKEN_BYTES = 4096  # python-jose has no size limit for signed tokens; parsing is not free
LEEWAY_SECONDS = 10  # clock skew tolerated on exp, nbf and iat
# A `kid` worth reporting as unknown: short, printable ASCII. Anything else is just invalid.
KID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")

# The one spelling of a JWS that is verified: the compact serialization of RFC 7515 (sections
# 2 and 7.1), three base64url segments joined by dots, without `=` padding, whitespace or any
# other character. python-jose's decoder pads, takes `+/` for `-_` and skips characters outside
# the alphabet, so `<token>=`, a signature spelled with `+/`, or one with spaces or a non-ASCII
# letter inside all verified as the same token; anything keyed on the token string (a log, a
# cache, a deny list) would see several tokens where there is one. Per segment: whole groups of
# four characters, then nothing or a tail of two or three (a length of 4n+1 holds no whole
# byte). The tail's last character has unused low bits, which must be zero (RFC 4648 section
# 3.5: canonical encoding), or four spellings (after three characters) or sixteen (after two)
# decode to the same bytes; so after two only `AQgw` are left, after three every fourth letter
# of the alphabet. No segment is empty: an empty signature is `alg: none`, an empty header or
# payload no JWT. The groups are possessive (`*+`): a failing token is never rescanned, so the
# check stays linear in the token's length: about 2 us for a 360-byte HS256 token (its whole
# verification takes 20 us), 18 us for 4096 bytes that fail at the end.
_SEGMENT = (
    "(?=[A-Za-z0-9_-])"  # not empty
    "(?:[A-Za-z0-9_-]{4})*+"  # three bytes per group of four
    "(?:[A-Za-z0-9_-][AQgw]|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048])?"  # one or two bytes more
)
CANONICAL_JWS = re.compile(r"\.".join((_SEGMENT, _SEGMENT, _SEGMENT)))

# A token that fails in any of these ways is simply invalid. ValueError: bad base64 or JSON;
# RecursionError: a deeply nested JSON header, which python-jose parses before it checks the
# signature; TypeError/KeyError/AttributeError/OverflowError: odd shapes inside python-jose.
TOKEN_ERRORS = (
    JOSEError,
    TypeError,
    ValueError,
    KeyError,
    AttributeError,
    OverflowError,
    RecursionError,
)


def media_type(typ: str) -> str:
    """A `typ` header value as RFC 7515 (section 4.1.9) says to compare it: media types match
    without regard to case, and one without a `/` stands for `application/` + itself, so
    `AT+JWT`, `application/at+jwt` and `Application/AT+JWT` are one type."""
    lowered = typ.lower()
    return lowered if "/" in lowered else "application/" + lowered


def numeric_date(value: Any) -> float | None:
    """A NumericDate (RFC 7519, section 2): any finite JSON number, whole or not. A bool is an
    int to Python but not to JSON, and NaN and the infinities (which Python's JSON parser
    accepts) are no dates; each of these is None."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return value
    return None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: all a route ever learns from a token."""

    sub: str
    sid: str
    scopes: frozenset[str]
    expires_at: int  # Unix time, seconds


@dataclass(frozen=True, slots=True)
class UnknownKey:
    """A token that is well formed, for our algorithm, but names a key we do not hold.

    Invalid as it stands (401); a verifier of a remote issuer's keys may refresh its key set
    once on this and try again. Only a `kid` matching `KID_PATTERN` is ever carried here.
    """

    kid: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A token refused (401) for a reason an operator needs told apart from "invalid": the
    reason is its `auth_rejections_total` label, one of `metrics.AUTH_REASONS`."""

    reason: str


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int  # seconds


class TokenIssuer:
    """Signs access tokens for a session."""

    def __init__(self, settings: Settings, keys: KeySet) -> None:
        self._algorithm = settings.jwt_algorithm
        self._key = keys.signing_key
        self._headers = {"typ": ACCESS_TOKEN_TYPE, "kid": keys.signing_kid}
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl_seconds = settings.access_token_ttl_seconds
        self._public_client = settings.public_client_id

    @property
    def ttl_seconds(self) -> int:
        return self._ttl_seconds

    def issue(
        self, sub: str, sid: str, scopes: Iterable[str], client_id: str | None = None
    ) -> AccessToken:
        """A token for session `sid` of `sub`, issued to `client_id` (by default the public
        client, whose tokens are users')."""
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": sub,
            "sid": sid,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + self._ttl_seconds,
            "scope": " ".join(sorted(scopes)),
            "client_id": client_id or self._public_client,
        }
        token = jwt.encode(claims, self._key, algorithm=self._algorithm, headers=self._headers)
        return AccessToken(token=token, expires_in=self._ttl_seconds)


class TokenVerifier:
    """Turns a bearer token into a `Principal`; None when the token is not acceptable, and
    `UnknownKey` when it is well formed but names a key `keys` does not hold (also a 401).

    The header's `kid` only selects among keys the service already holds (`keys`, loaded at
    startup); an unknown `kid` costs a dictionary lookup, no I/O. python-jose's key object for
    that `kid`, made for the one configured algorithm, then checks the signature over the
    token's first two segments (what `jws.verify` does once it has parsed the token again, the
    third time counting ours and the canonical-form check); the claim rules are
    written out in `_principal_from`, each required explicitly (python-jose's own claim
    validation requires nothing by default, and costs more than the signature check).
    """

    def __init__(self, settings: Settings, keys: KeyLookup) -> None:
        # The `typ` values accepted (as `media_type` spells them); ours are always at+jwt.
        self._types = frozenset({media_type(ACCESS_TOKEN_TYPE)})
        self._allow_missing_typ = False
        self._whole_seconds = True  # our times are integers; an issuer's may not be
        self._algorithm = settings.jwt_algorithm
        self._keys = keys
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience

    def verify(self, token: str) -> Principal | UnknownKey | Refused | None:
        # The size cap first: the pattern then never reads more than MAX_TOKEN_BYTES.
        if len(token) > MAX_TOKEN_BYTES or not CANONICAL_JWS.fullmatch(token):
            return None
        signing_input, _, signature = token.rpartition(".")
        header_segment, _, payload_segment = signing_input.partition(".")
        try:
            # Unverified until the signature is checked: used here only to pick one of our keys,
            # and to refuse any `alg` but the configured one (RFC 8725, section 3.1).
            header = json.loads(base64url_decode(header_segment.encode("ascii")))
            if header.get("alg") != self._algorithm:
                return None
            kid = header.get("kid")
            if not (isinstance(kid, str) and KID_PATTERN.fullmatch(kid)):
                return None
            key = self._keys.verification_key(kid)
            if key is None:
                return UnknownKey(kid)
            # Every key was made for the configured algorithm only, when loaded (`auth/keys.py`,
            # `auth/remote_keys.py`), so a header cannot choose another; the signature covers the
            # header and the payload.
            signature_bytes = base64url_decode(signature.encode("ascii"))
            if not key.verify(signing_input.encode("ascii"), signature_bytes):
                return None
            claims = json.loads(base64url_decode(payload_segment.encode("ascii")))
            return self._principal_from(header, claims, time.time())
        except TOKEN_ERRORS:
            return None

    def _principal_from(self, header: Any, claims: Any, now: float) -> Principal | Refused | None:
        """RFC 8725 and RFC 9068 rules for an access token this service issued itself."""
        exp = self._expiry_if_current(header, claims, now)
        if exp is None:
            return None
        sub, sid, scope, jti = (claims.get(name) for name in ("sub", "sid", "scope", "jti"))
        if not (isinstance(scope, str) and isinstance(jti, str) and jti):
            return None
        # sub and sid become parts of Redis key names: accept only the shapes this service issues.
        if not (
            isinstance(sub, str)
            and isinstance(sid, str)
            and USERNAME_PATTERN.fullmatch(sub)
            and SESSION_ID_PATTERN.fullmatch(sid)
        ):
            return None
        return Principal(sub=sub, sid=sid, scopes=frozenset(scope.split()), expires_at=exp)

    def _expiry_if_current(self, header: Any, claims: Any, now: float) -> int | None:
        """The rules every token meets, ours or a remote issuer's: an accepted `typ`, no `crit`,
        `iss` and `aud` naming us, and times within the leeway (for our own tokens, whole
        seconds, as we write them). Returns `exp` (whole seconds, rounded down), or None when
        a rule is broken."""
        if not isinstance(header, dict) or not self._accepts_type(header.get("typ")):
            return None
        # `crit` lists extensions the recipient must understand or reject the token (RFC 7515,
        # section 4.1.11). This service understands none, and python-jose does not check it.
        if "crit" in header:
            return None
        if not isinstance(claims, dict) or not self._names_us(claims):
            return None
        exp, iat = numeric_date(claims.get("exp")), numeric_date(claims.get("iat"))
        nbf = numeric_date(claims.get("nbf", 0))
        if exp is None or iat is None or nbf is None:
            return None
        if self._whole_seconds and not (type(exp) is type(iat) is type(nbf) is int):
            return None
        if exp + LEEWAY_SECONDS <= now or iat - LEEWAY_SECONDS > now or nbf - LEEWAY_SECONDS > now:
            return None
        return math.floor(exp)

    def _accepts_type(self, typ: Any) -> bool:
        """Explicit typing (RFC 8725, section 3.11): the header says this is an access token."""
        if typ is None:
            return self._allow_missing_typ
        return isinstance(typ, str) and media_type(typ) in self._types

    def _names_us(self, claims: dict[str, Any]) -> bool:
        """`iss` is this service, and `aud` is this service (or a list that includes it)."""
        audience = claims.get("aud")
        if isinstance(audience, list):
            for_us = self._audience in audience and all(isinstance(a, str) for a in audience)
        else:
            for_us = audience == self._audience
        return for_us and claims.get("iss") == self._issuer


def create_token_pair(
    settings: Settings, keys: KeySet | None = None
) -> tuple[TokenIssuer, TokenVerifier]:
    """The issuer and verifier for these settings; keys are read here (or given), once."""
    keys = keys or load_key_set(settings)
    return TokenIssuer(settings, keys), TokenVerifier(settings, keys)
