"""asyncpg connections configured the one way crm-ingest uses them.

Sessions run in UTC: the seed's columns are TIMESTAMP (without time zone), so NOW() defaults and
the provider times we write must agree on the zone. JSONB is exchanged as Python objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import asyncpg
import pydantic_core

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

SERVER_SETTINGS = {"timezone": "UTC", "application_name": "crm-ingest"}


def _json_text(value: Any) -> str:
    # pydantic-core's serializer (Rust): half the time of json.dumps on the consumer's
    # per-event metadata, which every batch sends by the thousand.
    return pydantic_core.to_json(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=_json_text, decoder=pydantic_core.from_json, schema="pg_catalog"
        )


def pooled(conn: PoolConnectionProxy[asyncpg.Record]) -> asyncpg.Connection:
    """A pool's connection where a Connection is expected. asyncpg makes its proxy one at run
    time (`isinstance(proxy, asyncpg.Connection)` holds); only the stubs keep them apart."""
    return cast(asyncpg.Connection, conn)


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url, server_settings=SERVER_SETTINGS, **kwargs)
    await init_connection(conn)
    return conn


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        server_settings=SERVER_SETTINGS,
        init=init_connection,
    )
    assert pool is not None
    return pool
