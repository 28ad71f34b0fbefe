"""Helpers shared by the integration, acceptance and migration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from sql.db import connect

T = TypeVar("T")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str, prefix: str = "t") -> str:
    """A new, empty database on the same server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `done(value)`; returns the last value (the caller asserts on it)."""
    deadline = time.monotonic() + within
    value = await probe()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = await probe()
    return value
