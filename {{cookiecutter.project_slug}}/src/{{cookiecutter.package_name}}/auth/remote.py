"""Verifying tokens another party issued: a sibling service, or an identity provider.

The signature is checked exactly as for our own tokens (`TokenVerifier.verify`: one algorithm
from configuration, the key picked by `kid` among the keys the issuer published, the size cap,
the one spelling); only the claim rules differ, because identity providers write their tokens a
little differently from this service and from each other:

- `typ`: RFC 9068 asks for `at+jwt`; Keycloak, Auth0 and Entra ID send `JWT`, node jose's
  `SignJWT` none at all. `APP_JWT_ACCEPTED_TYPES` (default `at+jwt,jwt`) lists what is taken,
  compared as RFC 7515 says (`media_type`); a token without `typ` only with
  `APP_JWT_ALLOW_MISSING_TYP=true`. Accepting `JWT` does not let an ID token of the same
  provider through: an ID token's `aud` is the client application that logged the user in,
  never this API's audience, so `_names_us` refuses it.
- Times may be any finite number (authlib signs `time.time()` as it is).
- Scopes: from each claim in `APP_JWT_SCOPE_CLAIMS` (default `scope,scp`), a space-separated
  string (`scope`; `scp` at Entra ID) or an array of strings (`scp` at Okta, `scope` at some
  others). A claim of any other shape gives no scopes: a token with odd scopes can still reach
  the routes that need none, and gets 403 from those that need some.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ..logs import OncePerWindow
from ..settings import Settings
from .remote_keys import RemoteKeys
from .sessions import SESSION_ID_PATTERN
from .tokens import Principal, Refused, TokenVerifier, media_type
from .users import USERNAME_PATTERN

logger = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255  # a `sub` is an identifier, not a document
PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")  # no control characters in a `sub`
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749, section 3.3: one scope
NO_SESSION_WARNING = (
    "refused a token that names no session (sid): APP_JWT_REQUIRE_SESSION=true wants tokens of "
    "a sibling service that shares this Redis; for an identity provider's tokens set "
    "APP_JWT_REQUIRE_SESSION=false"
)


# A token that passed every check but names no session, while sessions are required.
NO_SESSION = Refused("no_session")


def scopes_from(claims: dict[str, Any], names: tuple[str, ...]) -> frozenset[str]:
    """The scopes of every claim in `names`: each a space-separated string or an array of
    strings, every part a scope token (RFC 6749); any other shape gives nothing."""
    scopes: set[str] = set()
    for name in names:
        value = claims.get(name)
        parts = value.split() if isinstance(value, str) else value
        if isinstance(parts, list) and all(
            isinstance(part, str) and SCOPE_TOKEN.fullmatch(part) for part in parts
        ):
            scopes.update(parts)
    return frozenset(scopes)


class RemoteTokenVerifier(TokenVerifier):
    """A `TokenVerifier` over a remote issuer's keys, with that issuer's claim rules.

    With `APP_JWT_REQUIRE_SESSION=true` a token must name a session (`sid`) in the Redis this
    service shares with its issuer, and its `sub` must be a user name of that issuer's shape;
    a token naming none is refused as `NO_SESSION`, and said so in the log once per window.
    With `false` any printable `sub` is accepted (it reaches Redis only as a digest) and the
    principal's `sid` is empty.
    """

    def __init__(self, settings: Settings, keys: RemoteKeys) -> None:
        super().__init__(settings, keys)
        self._types = frozenset(media_type(typ) for typ in settings.jwt_accepted_types)
        self._allow_missing_typ = settings.jwt_allow_missing_typ
        self._whole_seconds = False
        self._scope_claims = settings.jwt_scope_claims
        self.remote_keys = keys
        self._require_session = settings.jwt_require_session
        self._no_session_lines = OncePerWindow()

    def describe(self) -> str:
        """What this verifier asks of a token, in one line for the startup log."""
        if self._require_session:
            return (
                "remote issuer: every token must name a live session (sid) in the shared Redis "
                "(APP_JWT_REQUIRE_SESSION=true)"
            )
        return (
            "remote issuer: tokens are not checked against sessions; the rate limit keys on "
            "their subject (APP_JWT_REQUIRE_SESSION=false)"
        )

    def _principal_from(self, header: Any, claims: Any, now: float) -> Principal | Refused | None:
        exp = self._expiry_if_current(header, claims, now)  # typ, crit, iss, aud, times
        if exp is None:
            return None
        jti = claims.get("jti", "")
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(jti, str) and isinstance(sub, str)):
            return None
        if self._require_session:
            # sub and sid become parts of Redis key names, and must be the issuer's own shapes.
            if sid is None:
                return self._no_session()
            if not (
                isinstance(sid, str)
                and USERNAME_PATTERN.fullmatch(sub)
                and SESSION_ID_PATTERN.fullmatch(sid)
            ):
                return None
        elif len(sub) > MAX_SUBJECT_LENGTH or not PRINTABLE.fullmatch(sub):
            return None
        else:
            sid = ""  # no session to check; the rate limit keys on a digest of sub
        scopes = scopes_from(claims, self._scope_claims)
        return Principal(sub=sub, sid=sid, scopes=scopes, expires_at=exp)

    def _no_session(self) -> Refused:
        left_out = self._no_session_lines.allow()
        if left_out is not None:
            more = f" ({left_out} more since the last such line)" if left_out else ""
            logger.warning(NO_SESSION_WARNING + more)
        return NO_SESSION


async def verify_with_fresh_keys(verifier: TokenVerifier, token: str) -> Principal | Refused | None:
    """A token naming a key we do not hold: if the issuer may have published it since our last
    fetch, fetch once (shared with every request waiting, at most once per 30 s) and verify
    again. Our own keys never change while we run, so for them this is a plain no."""
    if not isinstance(verifier, RemoteTokenVerifier):
        return None
    if not await verifier.remote_keys.refresh_for_unknown_kid():
        return None
    again = verifier.verify(token)
    return again if isinstance(again, Principal | Refused) else None
