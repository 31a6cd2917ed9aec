"""A Kafka outage a test can switch on and off without touching the shared cluster.

:class:`BrokerProxy` puts a TCP proxy in front of every Kafka node this process connects to.
While it is ``cut`` each proxy goes on accepting connections and reading what clients send,
but forwards nothing and answers nothing, in both directions, on new and existing
connections alike: to a client that is a cluster behind a network partition (requests time
out, nothing is refused), the outage that idempotent producers wait out the longest.

A Kafka client connects to its bootstrap addresses, then to the addresses the nodes
advertise in their metadata: :meth:`BrokerProxy.route` makes every aiokafka connection of
this process go through a proxy of its own per node address instead, made on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any
from unittest import mock

import aiokafka.client

Address = tuple[str, int]


class BrokerProxy:
    def __init__(self) -> None:
        self.cut = False
        self._servers: dict[Address, asyncio.Server] = {}
        self._pipes: set[asyncio.Task[None]] = set()

    async def address_for(self, node: Address) -> Address:
        """The proxy in front of ``node`` (started on first use)."""
        if node not in self._servers:
            accept = functools.partial(self._accept, node)
            self._servers[node] = await asyncio.start_server(accept, "127.0.0.1", 0)
        host, port = self._servers[node].sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
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
        """Within the block, aiokafka connections of this process go through the proxies."""
        real = aiokafka.client.create_conn

        async def create_conn(host: str, port: int, **kwargs: Any) -> Any:
            host, port = await self.address_for(
                ("127.0.0.1" if host == "localhost" else host, port)
            )
            return await real(host, port, **kwargs)

        with mock.patch.object(aiokafka.client, "create_conn", create_conn):
            yield

    async def _accept(
        self, node: Address, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*node)
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
