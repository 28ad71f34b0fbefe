"""The shared harness of the provider fakes: a Starlette app served by uvicorn on a real
127.0.0.x socket in a thread of its own, recording every request and answering scripted
responses first.

Each provider module (telegram.py, whatsapp.py, twilio.py) builds its routes on one or more
`FakeServer`s: separate servers are separate origins, which is what cross-origin redirects need.
Routes are named; `script(name, ...)` queues answers that the named route gives before its
normal behaviour, so a test says "429 then success" as `script("api", Scripted(429, ...))`.
Send endpoints can be added to the same modules as more named routes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the fake received it."""

    route: str
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


@dataclass(frozen=True, slots=True)
class Scripted:
    """A canned answer, given instead of the route's normal behaviour."""

    status: int
    json: Any = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the headers are sent

    def response(self) -> Response:
        if self.json is not None:
            return JSONResponse(self.json, self.status, headers=dict(self.headers))
        return Response(self.body, self.status, headers=dict(self.headers))


@dataclass(slots=True)
class Body:
    """Bytes to serve, with the ways a body can misbehave."""

    data: bytes
    content_type: str = "application/octet-stream"
    chunk_size: int = 64 * 1024
    chunk_delay_s: float = 0.0  # between chunks: a slow or stalled body
    content_length: bool = True  # False: chunked, no size announced
    claimed_length: int | None = None  # a Content-Length that lies

    def response(self, status: int = 200) -> Response:
        headers = {"content-type": self.content_type}
        if self.claimed_length is not None:
            headers["content-length"] = str(self.claimed_length)
        elif self.content_length:
            headers["content-length"] = str(len(self.data))
        if self.chunk_delay_s == 0 and self.claimed_length is None and self.content_length:
            return Response(self.data, status, headers=headers)
        return StreamingResponse(self._chunks(), status, headers=headers)

    async def _chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk_size):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield self.data[start : start + self.chunk_size]


class FakeServer:
    """One origin: http://<host>:<free port>."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.requests: list[Recorded] = []
        self._scripts: defaultdict[str, deque[Scripted]] = defaultdict(deque)
        self._routes: list[Route] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        """The entry CRM_INGEST_MEDIA_ALLOWED_HOSTS needs for this origin."""
        return f"{self.host}:{self.port}"

    def route(self, path: str, name: str, handler: Handler, methods: list[str]) -> None:
        async def recorded(request: Request) -> Response:
            body = await request.body()
            self.requests.append(
                Recorded(
                    route=name,
                    method=request.method,
                    path=request.url.path,
                    query=dict(request.query_params),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                )
            )
            queued = self._scripts[name]
            if queued:
                scripted = queued.popleft()
                if scripted.delay_s:
                    await asyncio.sleep(scripted.delay_s)
                return scripted.response()
            return await handler(request)

        self._routes.append(Route(path, recorded, methods=methods, name=name))

    def script(self, route: str, *responses: Scripted) -> None:
        self._scripts[route].extend(responses)

    def calls(self, route: str) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    def reset(self) -> None:
        self.requests.clear()
        self._scripts.clear()

    def start(self) -> None:
        # IPPROTO_TCP, or asyncio leaves TCP_NODELAY off and every reused connection waits ~40 ms
        # on a delayed ACK (asyncio `_set_nodelay` checks the socket's proto).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=self._routes),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,  # a stalled body must not hold the session's end
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"fake-{self.name}"
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fake {self.name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


class Clock:
    """A fake's notion of now, which a test moves forward to expire links and ids."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
