"""A TCP forwarder standing for a managed Redis endpoint (or a Sentinel-aware proxy): one address
in front of whichever server is the primary.

Like those endpoints, it sends each new connection to its current target and leaves the
connections it already forwards where they are: after a failover, a client that keeps its
connections open keeps talking to the old primary, which by then may be a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

CHUNK_BYTES = 64 * 1024


@dataclass
class Forwarder:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target`; `retarget` changes it for new
    connections only."""

    target: int
    port: int = 0
    # Per target port: connections accepted, and how many of those the client has closed.
    opened: dict[int, int] = field(default_factory=dict)
    closed_by_client: dict[int, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def retarget(self, target: int) -> None:
        self.target = target

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _forward(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        target = self.target
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_out.close()
            return
        self.opened[target] = self.opened.get(target, 0) + 1
        upstream = asyncio.ensure_future(self._pipe(client_in, server_out))
        downstream = asyncio.ensure_future(self._pipe(server_in, client_out))
        self._pipes |= {upstream, downstream}
        try:
            await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
            if upstream.done() and not upstream.cancelled():
                self.closed_by_client[target] = self.closed_by_client.get(target, 0) + 1
        finally:
            for pipe in (upstream, downstream):
                pipe.cancel()
                self._pipes.discard(pipe)
            for writer in (client_out, server_out):
                writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(CHUNK_BYTES):
                sink.write(data)
                await sink.drain()
