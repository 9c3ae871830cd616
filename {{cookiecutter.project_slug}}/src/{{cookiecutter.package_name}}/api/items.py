"""`GET /items` and `POST /items`: the example router to copy for routes of your own.

It shows a route that needs a scope (`read`), a route that needs another (`write`) and has a
rate limit of its own, and data kept per user in Redis the way every key here is kept: under
the key prefix, with a hash tag, bounded in size and with a TTL. The README's "Add a protected
route" walks through it; `create_app` registers the router and makes the `ItemStore`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from .. import errors
from ..auth.tokens import Principal
from ..item_store import ItemStore
from ..rates import Rate
from ..state import app_state
from .security import limited_principal, require_scopes

MAX_ITEM_LENGTH = 200  # characters
# Writing has a limit of its own, in place of APP_RATE_LIMIT: its own bucket per user, taken
# in the same single Redis call that checks the session.
WRITE_RATE = Rate(10, 60)

router = APIRouter(tags=["example"])

Reader = Annotated[Principal, Depends(require_scopes("read"))]
Writer = Annotated[
    Principal,
    Depends(require_scopes("write", authenticated=limited_principal(WRITE_RATE, "items-write"))),
]


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_ITEM_LENGTH)


class Item(BaseModel):
    text: str


class Items(BaseModel):
    items: list[Item]  # newest first


def item_store(request: Request) -> ItemStore:
    return app_state(request).stores.items


Store = Annotated[ItemStore, Depends(item_store)]


@router.get("/items", responses=errors.responses(400, 401, 403, 429, 503))
async def list_items(principal: Reader, store: Store) -> Items:
    """The caller's items, newest first (needs the `read` scope)."""
    return Items(items=[Item(text=text) for text in await store.newest(principal.sub)])


@router.post(
    "/items", status_code=201, responses=errors.responses(400, 401, 403, 413, 422, 429, 503)
)
async def add_item(item: NewItem, principal: Writer, store: Store) -> Item:
    """Add an item (needs the `write` scope; at most 10 a minute per user, on a limit of its own,
    named `items-write` in the RateLimit headers)."""
    await store.add(principal.sub, item.text)
    return Item(text=item.text)
