"""Operator actions behind `crm-ingest migrate | tenant add | channel add` (and `dev`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

import sql
from ingest.config import Transport
from ingest.errors import ChannelConfigError
from ingest.transports import load_adapters
from sql.db import connect


def webhook_path(transport: str, channel_id: uuid.UUID) -> str:
    return f"/webhooks/{transport}/{channel_id}"


def channel_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "transport": row["transport"],
        "name": row["name"],
        "webhook_path": webhook_path(row["transport"], row["id"]),
        "config": row["config"],
    }


async def migrate(database_url: str) -> list[str]:
    conn = await connect(database_url)
    try:
        return await sql.migrate(conn)
    finally:
        await conn.close()


async def add_tenant(database_url: str, tenant_id: uuid.UUID, name: str = "") -> dict[str, str]:
    conn = await connect(database_url)
    try:
        row = await conn.fetchrow(sql.QUERIES["insert_tenant"], tenant_id, name)
        assert row is not None  # an upsert's RETURNING always yields its row
        return {"id": str(row["id"])}
    finally:
        await conn.close()


async def insert_channel(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    transport: Transport,
    given: Mapping[str, str],
    *,
    name: str = "",
) -> dict[str, Any]:
    adapters = load_adapters()
    if transport not in adapters:
        raise ChannelConfigError(f"transport {transport} is not available in this version")
    config = adapters[transport].channel_config(given)
    if not await conn.fetchval(sql.QUERIES["tenant_exists"], tenant_id):
        raise LookupError(f"unknown tenant {tenant_id}")
    row = await conn.fetchrow(sql.QUERIES["insert_channel"], tenant_id, transport, name, config)
    assert row is not None  # INSERT ... RETURNING yields the row it inserted
    return channel_view(row)


async def add_channel(
    database_url: str,
    tenant_id: uuid.UUID,
    transport: Transport,
    given: Mapping[str, str],
    *,
    name: str = "",
) -> dict[str, Any]:
    conn = await connect(database_url)
    try:
        return await insert_channel(conn, tenant_id, transport, given, name=name)
    finally:
        await conn.close()
