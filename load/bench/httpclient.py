"""A minimal HTTP/1.1 keep-alive client for the load generator.

The load generator shares two cores with the suite it measures, so every millisecond it
spends is one the suite does not get. httpx costs about a millisecond of CPU per request;
this writes one prepared request and reads one ``Content-Length`` response, about a tenth.
It speaks only what the suite's JSON API answers; anything else is an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


class HttpError(RuntimeError):
    """The server answered something this client does not read, or hung up."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> Response:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise HttpError(f"no Content-Length in the answer: {status_line!r}")
        body = await self.reader.readexactly(length)
        return Response(int(status_line.split(" ", 2)[1]), body)

    def close(self) -> None:
        self.writer.close()


class Client:
    """Connections to one ``host:port``, reused; at most ``limit`` open at once (a request
    beyond waits for one, and that wait counts in its latency)."""

    def __init__(self, host: str, port: int, limit: int = 256) -> None:
        self._host, self._port = host, port
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            if self._idle:
                connection = self._idle.pop()
                try:
                    return self._keep(connection, await connection.exchange(request))
                except (OSError, asyncio.IncompleteReadError):
                    # The server closed it while idle (its keep-alive timeout): the request
                    # never reached it, so it is sent again on a new connection.
                    connection.close()
            connection = await self._connect()
            try:
                return self._keep(connection, await connection.exchange(request))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                connection.close()
                raise HttpError(f"{method} {path}: {error!r}") from error
            except BaseException:
                connection.close()
                raise

    def _keep(self, connection: _Connection, response: Response) -> Response:
        self._idle.append(connection)
        return response

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        return _Connection(reader, writer)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
