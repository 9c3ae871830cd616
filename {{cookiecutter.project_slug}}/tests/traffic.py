"""Steady traffic for the failover tests, with every answer recorded.

Two kinds of client run side by side, each as a loop of its own:

- a reader keeps calling `/me` with one session, opened before the traffic started;
- a cycler logs in, calls `/me`, refreshes, calls `/me` with the new token, logs out, and
  starts again.

A 503 is answered by trying the same step again after `AFTER_503_SECONDS` (a real client would
wait the `Retry-After` second; the tests retry sooner to see the recovery as it happens). A 401
where the session should be alive means Redis lost the session's last write: the cycler records
it and starts a new cycle. Every answer is kept with the times it was asked and answered, so a
test can tell which answers came while a user's slot had no primary, and whether a lost write
was acknowledged before or after a replication checkpoint.

What every failover test then checks the same way: what the traffic may have cost
(`assert_only_503s_and_late_writes_lost`), and the sessions opened before the checkpoint
(`statuses_of_sessions`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from {{ cookiecutter.package_name }}.cli.serve import KEEP_ALIVE_SECONDS

from .helpers import PASSWORD, bearer

# Long enough that a loop of 503s does not spin two shared cores, short enough to see the
# recovery within a fraction of a second.
AFTER_503_SECONDS = 0.05
# A client must give an idle connection up before `serve` closes it (KEEP_ALIVE_SECONDS), as
# nginx does. With equal timeouts, a request sent as uvicorn's timer closes the connection is
# lost (httpx: ReadError or RemoteProtocolError): a status 0 that is the client's fault.
CLIENT_KEEP_ALIVE_SECONDS = KEEP_ALIVE_SECONDS - 1


@dataclass(frozen=True, slots=True)
class Answer:
    user: str
    step: str  # me, login, refresh, logout
    asked: float  # time.monotonic()
    answered: float
    status: int  # 0: no HTTP answer at all
    retry_after: str | None
    # For a step on a session: when the session's last write (its login or refresh) was
    # acknowledged to this client.
    written: float | None
    failure: str = ""  # for status 0: the transport error's type, e.g. "ReadError"


@dataclass(frozen=True, slots=True)
class Logout:
    access_token: str
    acknowledged: float


def served_limits(connections: int) -> httpx.Limits:
    """A client's limits for traffic to a served process: `connections` at most, none reused
    after `CLIENT_KEEP_ALIVE_SECONDS` idle."""
    return httpx.Limits(max_connections=connections, keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS)


class Traffic:
    """Readers (user -> an access token of theirs) and cyclers (user names) against `client`."""

    def __init__(
        self, client: httpx.AsyncClient, readers: dict[str, str], cyclers: Sequence[str]
    ) -> None:
        self._client = client
        self._readers = readers
        self._cyclers = cyclers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.answers: list[Answer] = []
        self.logouts: list[Logout] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read(u, t)) for u, t in self._readers.items()]
        self._tasks += [asyncio.create_task(self._cycle(user)) for user in self._cyclers]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _ask(
        self, user: str, step: str, written: float | None, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        asked, failure = time.monotonic(), ""
        try:
            response: httpx.Response | None = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            response, failure = None, type(error).__name__
        status = response.status_code if response is not None else 0
        retry_after = response.headers.get("Retry-After") if response is not None else None
        answer = Answer(user, step, asked, time.monotonic(), status, retry_after, written, failure)
        self.answers.append(answer)
        if status == 503:
            await asyncio.sleep(AFTER_503_SECONDS)
        return response

    async def _read(self, user: str, token: str) -> None:
        while not self._stop.is_set():
            await self._ask(user, "me", None, "GET", "/me", headers=bearer(token))

    async def _cycle(self, user: str) -> None:
        while not self._stop.is_set():
            await self._one_cycle(user)

    async def _one_cycle(self, user: str) -> None:
        """Login, /me, refresh, /me, logout; each step again while it gets 503. Any other
        answer than the expected one ends the cycle (the test looks at the answers)."""
        form = {"username": user, "password": PASSWORD}
        pair = await self._until_answered(user, "login", None, "POST", "/auth/token", data=form)
        if pair is None:
            return
        written = time.monotonic()
        token = pair["access_token"]
        if not await self._until_answered(user, "me", written, "GET", "/me", headers=bearer(token)):
            return
        refresh = {"refresh_token": pair["refresh_token"]}
        pair = await self._until_answered(
            user, "refresh", written, "POST", "/auth/refresh", json=refresh
        )
        if pair is None:
            return
        written = time.monotonic()
        token = pair["access_token"]
        if not await self._until_answered(user, "me", written, "GET", "/me", headers=bearer(token)):
            return
        logout = await self._until_answered(
            user, "logout", written, "POST", "/auth/logout", headers=bearer(token)
        )
        if logout is not None:
            self.logouts.append(Logout(token, time.monotonic()))

    async def _until_answered(
        self, user: str, step: str, written: float | None, method: str, path: str, **kwargs: Any
    ) -> dict[str, Any] | None:
        """The step's JSON body (empty for a 204), or None if it got neither 2xx nor 503."""
        while not self._stop.is_set():
            response = await self._ask(user, step, written, method, path, **kwargs)
            if response is None or response.status_code != 503:
                if response is None or response.status_code >= 300:
                    return None
                body: dict[str, Any] = response.json() if response.content else {}
                return body
        return None


def assert_only_503s_and_late_writes_lost(answers: Sequence[Answer], checkpoint: float) -> None:
    """What a failover may cost the traffic, and nothing more: no 500 and no dropped connection
    (status 0), only 200, 204, 401 and 503; each 503 with `Retry-After: 1`; and a 401 where the
    session should live (a lost write) only for a write acknowledged after `checkpoint`, the last
    moment everything acknowledged was on the replica too."""
    unexpected = [answer for answer in answers if answer.status not in {200, 204, 401, 503}]
    assert not unexpected, f"{len(unexpected)} answers of another kind, first: {unexpected[:3]}"
    assert all(answer.retry_after == "1" for answer in answers if answer.status == 503)
    lost = [answer for answer in answers if answer.status == 401]
    assert all(a.written is not None and a.written >= checkpoint for a in lost)


async def statuses_of_sessions(
    client: httpx.AsyncClient, pairs: Iterable[dict[str, Any]]
) -> list[tuple[int, int]]:
    """For each session (its token pair): the status of `/me` with the access token, then of a
    refresh with the refresh token. A session opened before the checkpoint outlives a failover
    alive, its refresh token current: (200, 200)."""
    statuses = []
    for pair in pairs:
        seen = await client.get("/me", headers=bearer(pair["access_token"]))
        refresh = {"refresh_token": pair["refresh_token"]}
        refreshed = await client.post("/auth/refresh", json=refresh)
        statuses.append((seen.status_code, refreshed.status_code))
    return statuses
