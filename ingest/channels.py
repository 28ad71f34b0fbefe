"""Channel lookup for the gateway: `ingest_channels` rows by id, cached in memory.

Every webhook needs its channel (tenant, transport, secrets), so lookups are cached for
`channel_cache_ttl_s`. Unknown ids are cached too, but briefly (`NEGATIVE_TTL_S` at most): a
flood of made-up ids must not become a flood of queries, and a channel created a moment ago must
not stay unknown for long. A disabled or re-keyed channel takes effect within the TTL. Secrets
are decrypted when loaded and kept in memory only.

Concurrent lookups of the same id share one query. Database errors propagate unchanged and are
never cached; the gateway turns them into 503.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from ingest.config import TRANSPORTS, Settings, Transport
from ingest.credentials import Keyring, keyring, open_config
from ingest.logs import get_logger
from ingest.transports.base import Channel
from sql import QUERIES

if TYPE_CHECKING:
    import asyncpg

log = get_logger(__name__)

NEGATIVE_TTL_S = 5.0
# Bounds memory under a flood of distinct unknown ids; the oldest entries go first.
MAX_ENTRIES = 10_000
PING_TIMEOUT_S = 2.0


class Pool(Protocol):
    """The part of `asyncpg.Pool` used here (a fake in unit tests)."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


def parse_channel_id(raw: str) -> uuid.UUID | None:
    """The canonical 36-character form only: one spelling per channel, one cache entry."""
    if len(raw) != 36:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


class ChannelDirectory:
    def __init__(
        self,
        settings: Settings,
        pool: Pool | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._keyring = keyring(settings)
        self._pool = pool
        self._owned: asyncpg.Pool | None = None  # the pool `open` made, closed by `close`
        self._ttl = settings.channel_cache_ttl_s
        self._negative_ttl = min(self._ttl, NEGATIVE_TTL_S)
        self._clock = clock
        self._cache: OrderedDict[uuid.UUID, tuple[float, Channel | None]] = OrderedDict()
        self._inflight: dict[uuid.UUID, asyncio.Task[Channel | None]] = {}

    async def open(self) -> None:
        """Create the pool when none was given.

        `min_size=0`: no connection is made here, so the gateway boots while PostgreSQL is down
        and answers 503 (readyz says why) until it is back.
        """
        if self._pool is None:
            from sql.db import create_pool

            self._owned = await create_pool(
                self._settings.database_url, min_size=0, max_size=self._settings.db_pool_max
            )
            self._pool = self._owned

    async def close(self) -> None:
        pool, self._pool, self._owned = self._owned, None, None
        self._cache.clear()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5.0)
            except TimeoutError:
                pool.terminate()

    async def get(self, channel_id: str) -> Channel | None:
        """The channel with that id, enabled or not; None when unknown or malformed."""
        key = parse_channel_id(channel_id)
        if key is None:
            return None
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        # shield: one caller giving up (client gone) must not cancel the others' query.
        return await asyncio.shield(task)

    def _finished(self, key: uuid.UUID, task: asyncio.Task[Channel | None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved even when every waiter went away

    async def _load(self, key: uuid.UUID) -> Channel | None:
        if self._pool is None:
            raise RuntimeError("ChannelDirectory is not open")
        row = await self._pool.fetchrow(QUERIES["get_channel"], key)
        channel = _to_channel(row, self._keyring) if row is not None else None
        ttl = self._ttl if channel is not None else self._negative_ttl
        if ttl > 0:
            self._cache[key] = (self._clock() + ttl, channel)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_ENTRIES:
                self._cache.popitem(last=False)
        return channel

    def invalidate(self, channel_id: uuid.UUID | None = None) -> None:
        """Forget one channel (or all); the next lookup reads the database."""
        if channel_id is None:
            self._cache.clear()
        else:
            self._cache.pop(channel_id, None)

    async def ping(self) -> bool:
        """Readiness: the database answers `SELECT 1` within two seconds."""
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                return bool(await self._pool.fetchval("SELECT 1") == 1)
        except Exception as exc:
            log.debug("database ping failed", error=repr(exc))
            return False


def _to_channel(row: Any, keys: Keyring) -> Channel | None:
    transport = row["transport"]
    if transport not in TRANSPORTS:
        # A transport this version does not know (newer writer): treat it as unknown here.
        log.warning("channel has an unknown transport", transport=transport)
        return None
    config = row["config"]
    if isinstance(config, str):  # a pool without sql.db's jsonb codec
        config = json.loads(config)
    # A secret that does not open (tampered, not encrypted, another key) raises: the gateway
    # answers 503 and logs the reason, rather than trusting a value it cannot authenticate.
    opened = open_config(keys, cast(Transport, transport), row["id"], config or {})
    return Channel(
        id=row["id"],
        tenant_id=row["tenant_id"],
        transport=cast(Transport, transport),
        config=opened.config,
        enabled=bool(row["enabled"]),
        previous=opened.previous,
    )
