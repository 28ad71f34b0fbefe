"""The gateway phase's load generators: a minimal keep-alive HTTP/1.1 client, or httpx."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class Poster(Protocol):
    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int: ...

    async def aclose(self) -> None: ...


class RawConnection:
    """One HTTP/1.1 keep-alive connection, one request at a time; Content-Length bodies only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes) -> int:
        self.writer.write(head + body)
        status = int((await self.reader.readuntil(b"\r\n")).split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client for load generation: a pool of connections, each
    reused as soon as its response is read. httpx costs ~1.7 ms of client CPU per request
    here, so with it the load generator, not the server, would be measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[RawConnection] = []
        self._all: list[RawConnection] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        lines = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect()
        try:
            status = await conn.request(head, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            if not reused:
                raise
            # The server closed this keep-alive connection while it was idle (uvicorn does
            # after 5 s, e.g. while the other server's round runs): retry on a fresh one.
            self._all.remove(conn)
            conn.writer.close()
            conn = await self._connect()
            status = await conn.request(head, body)
        self._idle.append(conn)
        return status

    async def _connect(self) -> RawConnection:
        conn = RawConnection(*await asyncio.open_connection(self.host, self.port))
        self._all.append(conn)
        return conn

    async def aclose(self) -> None:
        for conn in self._all:
            conn.writer.close()
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()
        self._all.clear()
        self._idle.clear()


class HttpxPoster:
    """The same interface on httpx.AsyncClient (`--gateway-client httpx`)."""

    def __init__(self, base_url: str, connections: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return (await self._client.post(path, content=body, headers=headers)).status_code

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(kind: str, port: int, connections: int) -> Poster:
    if kind == "httpx":
        return HttpxPoster(f"http://127.0.0.1:{port}", connections)
    return RawHttp("127.0.0.1", port)
