"""`GET /me`: the example protected route."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from .security import AUTHENTICATED, CurrentPrincipal

router = APIRouter(tags=["example"])


class Me(BaseModel):
    sub: str
    scopes: list[str]


@router.get("/me", responses=AUTHENTICATED)
async def me(principal: CurrentPrincipal) -> Me:
    """Who the token says the caller is, and what it may do."""
    return Me(sub=principal.sub, scopes=sorted(principal.scopes))
