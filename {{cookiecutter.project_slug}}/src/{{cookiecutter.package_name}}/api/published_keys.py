"""`GET /.well-known/jwks.json`: the public keys that verify this service's tokens (RS256/ES256).

Other services fetch it to verify our access tokens themselves. It lists the current key and,
after a rotation, the previous one, so tokens signed before a restart keep verifying elsewhere
too. The bytes are made once at startup (`KeySet.jwks_json`); there is nothing to rate-limit.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from ..state import app_state

router = APIRouter(tags=["keys"])

# Five minutes: a cache (a sibling service, a proxy) holds the set no longer than that, well
# under an access token's lifetime, while a fleet of verifiers fetches it a few times an hour,
# not per request. A verifier that meets a new `kid` sooner refetches on its own.
CACHE_CONTROL = "public, max-age=300"


class PublicKey(BaseModel):
    """A public JWK (RFC 7517): RSA keys carry `n` and `e`, EC keys `crv`, `x` and `y`."""

    kty: str = Field(examples=["EC"])
    kid: str = Field(description="RFC 7638 thumbprint of the key; tokens name it in their header")
    alg: str = Field(examples=["ES256"])
    use: str = Field(examples=["sig"])
    n: str | None = None
    e: str | None = None
    crv: str | None = None
    x: str | None = None
    y: str | None = None


class KeySetDocument(BaseModel):
    keys: list[PublicKey]


@router.get(
    "/.well-known/jwks.json",
    response_model=KeySetDocument,
    response_model_exclude_none=True,
    summary="Public keys (JWK Set)",
    responses={200: {"headers": {"Cache-Control": {"schema": {"type": "string"}}}}},
)
async def jwks(request: Request) -> Response:
    """The current and previous public verification keys, as a JWK Set."""
    return Response(
        app_state(request).issuer().keys.jwks_json,
        media_type="application/json",
        headers={"Cache-Control": CACHE_CONTROL},
    )
