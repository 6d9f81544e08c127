"""A TCP proxy of our own between an agent and its controller, to fault the link.

``LinkProxy`` listens on loopback and forwards every connection to ``upstream``. Its link
can be made slow (``delay_s``: each chunk is held that long before it is forwarded, in
both directions), stalled (``stall()``: connections stay open but no byte moves, as on a
partition that drops packets without a reset, until ``flow()``), or dropped (``drop()``:
every open connection is aborted, as on a reset). It counts what it did, so a test can
say what the link went through when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from dnnscaler.core.logging import get_logger

log = get_logger(__name__)

CHUNK_BYTES = 65536


@dataclass
class LinkCounts:
    accepted: int = 0
    upstream_refused: int = 0
    dropped: int = 0
    bytes_forwarded: int = 0


class LinkProxy:
    """``async with LinkProxy("127.0.0.1:PORT") as p: dial p.address``."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self.delay_s = 0.0
        self.counts = LinkCounts()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections open now (each has its upstream twin)."""
        return len(self._writers) // 2

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- faults ------------------------------------------------------------------------
    def stall(self) -> None:
        """Hold every byte from now on (new connections are accepted, and stall too)."""
        log.info("link_proxy.stall", open=self.open_connections)
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again, held bytes first."""
        log.info("link_proxy.flow", open=self.open_connections)
        self._flowing.set()

    def drop(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many."""
        n = self.open_connections
        for w in list(self._writers):
            w.transport.abort()
        self.counts.dropped += n
        log.info("link_proxy.drop", connections=n)
        return n

    # -- forwarding --------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            self.counts.upstream_refused += 1
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(CHUNK_BYTES)
                if not data:
                    break
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
                self.counts.bytes_forwarded += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other (a half-open link is not what we model).
            self._writers.discard(dst)
            dst.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in list(self._pumps):
            task.cancel()
        for task in list(self._pumps):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
