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

from .. import errors, scripts
from ..auth.dependencies import limited_principal, require_scopes
from ..auth.tokens import Principal
from ..keyspace import Keyspace
from ..rates import Rate
from ..redis_clients import RedisClient
from ..settings import Settings

MAX_ITEMS = 100  # per user; adding one more drops the oldest
MAX_ITEM_LENGTH = 200  # characters
ITEMS_TTL_SECONDS = 24 * 60 * 60  # a user's items go a day after their last addition
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


class ItemStore:
    """Each user's newest items, in one Redis list per user (the pooled client: these calls
    come on top of the request's session check)."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keyspace(settings.redis_key_prefix)
        self._add = scripts.register(redis, "items_add.lua")

    async def add(self, sub: str, text: str) -> None:
        """One script call: add, drop the oldest beyond `MAX_ITEMS`, renew the TTL."""
        ttl_ms = ITEMS_TTL_SECONDS * 1000
        await self._add(keys=[self._keys.items(sub)], args=[text, MAX_ITEMS, ttl_ms])

    async def newest(self, sub: str) -> list[str]:
        values = await self._redis.lrange(self._keys.items(sub), 0, MAX_ITEMS - 1)
        # Bytes from this client (it does not decode replies); redis-py's types allow str too.
        return [value.decode() if isinstance(value, bytes) else value for value in values]


def item_store(request: Request) -> ItemStore:
    store: ItemStore = request.app.state.items
    return store


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
