"""A Kafka outage a test can switch on and off without touching the shared broker.

:class:`BrokerProxy` is a TCP proxy in front of the real broker. While it is ``cut`` it goes
on accepting connections and reading what clients send, but forwards nothing and answers
nothing, in both directions, on new and existing connections alike: to a client that is a
broker behind a network partition (requests time out, nothing is refused), the outage that
idempotent producers wait out the longest.

A Kafka client connects to the bootstrap address, then to the addresses the broker
advertises in its metadata (the real broker's): :meth:`BrokerProxy.route` makes every
aiokafka connection of this process to the broker's address go through the proxy instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import aiokafka.client


class BrokerProxy:
    def __init__(self, broker: str) -> None:
        host, port = broker.rsplit(":", 1)
        self.broker = (host, int(port))
        self.cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "start() the proxy first"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def restore(self) -> None:
        """End the outage. The connections that were cut lost bytes mid-stream, so they are
        closed (the clients reconnect), as a broker's are when a partition heals."""
        self.cut = False
        for pipe in self._pipes:
            pipe.cancel()

    @contextlib.contextmanager
    def route(self) -> Iterator[None]:
        """Within the block, aiokafka connections of this process to the broker's address go
        through the proxy."""
        real = aiokafka.client.create_conn

        async def create_conn(host: str, port: int, **kwargs: Any) -> Any:
            if (host, port) == self.broker or (host == "localhost" and port == self.broker[1]):
                host, port = self.address
            return await real(host, port, **kwargs)

        with mock.patch.object(aiokafka.client, "create_conn", create_conn):
            yield

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.broker)
        except OSError:
            client_w.close()
            return
        for reader, writer in ((client_r, broker_w), (broker_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.cut:  # cut: swallowed, like packets into a partition
                    writer.write(data)
                    await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
