"""Process plumbing shared by the long-running verbs: one uvicorn server whose signals the
caller owns, SIGINT/SIGTERM turned into an event, "run until stopped", and the garbage
collector's settings for a long-running worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypedDict

from ingest.config import Settings

# Measured with `crm-ingest bench` (consumer phase, 100k events): CPython's default gen-0
# threshold of 700 made a batch of 500 events trigger dozens of collections, each walking the
# young objects and, every tenth, older ones: 3.6k events/s; 5,000: 4.3k; 20,000: 5.2k;
# 50,000: 4.6k (one consumer process; single runs, so differences under ~10 % are noise).
GC_GEN0_THRESHOLD = 20_000


def settle_heap(gen0_threshold: int = GC_GEN0_THRESHOLD) -> None:
    """Call once start-up is done: what exists now (modules, settings, caches) lives as long
    as the process, so it moves out of the collector's sight, and young objects are
    collected less often (a batch allocates thousands of short-lived ones)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


# uvicorn's choices, named rather than left to "auto" (which picks whatever is installed):
# httptools served 3.9-4.2k webhooks/s against h11's 3.2-3.4k; uvloop added nothing (4.0k).
class ServerStack(TypedDict):
    http: str
    loop: str


SERVER_STACK: ServerStack = {"http": "httptools", "loop": "asyncio"}


def http_server(app: Any, host: str, port: int, settings: Settings) -> Any:
    import uvicorn

    class ManagedServer(uvicorn.Server):
        # Signals are handled by the CLI so gateway and consumers shut down together.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        # uvicorn's access log prints query strings, and WhatsApp's handshake carries its
        # verify token there; the gateway logs one line per request itself, without them.
        access_log=False,
        # uvicorn hints int but only passes it to asyncio.timeout, which takes seconds as float.
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
        **SERVER_STACK,
    )
    return ManagedServer(config)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def serve_until_signalled(server: Any) -> None:
    """Run an `http_server` until SIGINT/SIGTERM, then let it finish what is in flight."""
    with stop_on_signals() as stop:
        await until_stopped(
            stop, server.serve(), on_stop=lambda: setattr(server, "should_exit", True)
        )


async def until_stopped(
    stop: asyncio.Event, work: Awaitable[Any], *, on_stop: Callable[[], None]
) -> None:
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    on_stop()
    waiter.cancel()
    await task
