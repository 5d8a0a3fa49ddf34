"""A loopback TCP forwarder in front of a real server, for tests that break the network.

``TcpProxy(host, port)`` listens on a free loopback port and forwards every connection to
the server. :meth:`blackhole` makes the network half-open: connections stay established,
but nothing is forwarded in either direction and new connections are accepted and
ignored - what a client sees when its peer vanished without a FIN (a partition, a dead
host). :meth:`heal` closes the connections that lost bytes and forwards again.
"""
from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.AbstractServer | None = None
        self._black = False
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        self._black = True

    def heal(self) -> None:
        self._black = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream_writer = None
        try:
            if self._black:
                while await reader.read(65536):
                    pass
                return
            up_reader, upstream_writer = await asyncio.open_connection(*self._target)
            self._writers.add(upstream_writer)
            await asyncio.gather(self._pump(reader, upstream_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if self._black:
                    continue  # lost in the network
                writer.write(data)
                await writer.drain()
        writer.close()
