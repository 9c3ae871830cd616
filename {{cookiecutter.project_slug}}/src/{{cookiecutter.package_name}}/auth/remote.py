"""Verifying tokens another party issued: a sibling service, or an identity provider.

The signature is checked exactly as for our own tokens (`TokenVerifier.verify`: one algorithm
from configuration, the key picked by `kid` among the keys the issuer published, the size cap);
only the claim rules differ, because identity providers write their tokens a little
differently from this service.
"""

from __future__ import annotations

import re
from typing import Any

from ..settings import Settings
from .jwks import RemoteKeys
from .sessions import SESSION_ID_PATTERN
from .tokens import Principal, TokenVerifier
from .users import USERNAME_PATTERN

# RFC 9068 asks for `at+jwt`; Keycloak, Auth0 and Entra ID send `JWT`. Accepting `JWT` does not
# let an ID token of the same provider through: an ID token's `aud` is the client application
# that logged the user in, never this API's audience, so `_names_us` refuses it.
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt", "JWT"})
MAX_SUBJECT_LENGTH = 255  # a `sub` is an identifier, not a document
PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")  # no control characters in a `sub`


class RemoteTokenVerifier(TokenVerifier):
    """A `TokenVerifier` over a remote issuer's keys, with that issuer's claim rules.

    With `APP_JWT_REQUIRE_SESSION=true` a token must name a session (`sid`) in the Redis this
    service shares with its issuer, and its `sub` must be a user name of that issuer's shape;
    with `false` any printable `sub` is accepted (it reaches Redis only as a digest) and the
    principal's `sid` is empty.
    """

    TYPES = ACCEPTED_TYPES

    def __init__(self, settings: Settings, keys: RemoteKeys) -> None:
        super().__init__(settings, keys)
        self.remote_keys = keys
        self._require_session = settings.jwt_require_session

    def _principal_from(self, header: Any, claims: Any, now: float) -> Principal | None:
        exp = self._expiry_if_current(header, claims, now)  # typ from ACCEPTED_TYPES
        if exp is None:
            return None
        scope, jti = claims.get("scope", ""), claims.get("jti", "")
        if not (isinstance(scope, str) and isinstance(jti, str)):
            return None
        sub, sid = claims.get("sub"), claims.get("sid")
        if not isinstance(sub, str):
            return None
        if self._require_session:
            # sub and sid become parts of Redis key names, and must be the issuer's own shapes.
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
        return Principal(sub=sub, sid=sid, scopes=frozenset(scope.split()), expires_at=exp)


async def verify_with_fresh_keys(verifier: TokenVerifier, token: str) -> Principal | None:
    """A token naming a key we do not hold: if the issuer may have published it since our last
    fetch, fetch once (shared with every request waiting, at most once per 30 s) and verify
    again. Our own keys never change while we run, so for them this is a plain no."""
    if not isinstance(verifier, RemoteTokenVerifier):
        return None
    if not await verifier.remote_keys.refresh_for_unknown_kid():
        return None
    again = verifier.verify(token)
    return again if isinstance(again, Principal) else None
