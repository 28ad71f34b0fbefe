"""The run's databases and topics: created fresh for each phase, dropped again afterwards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import sql
from ingest.bench.workload import BenchChannel
from ingest.config import Settings
from ingest.credentials import Keyring, seal_config
from sql.db import connect


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _on_server(server_url: str, statement: str) -> None:
    conn = await connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(server_url: str, name: str) -> str:
    await _on_server(server_url, f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    await _on_server(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def prepare_database(
    server_url: str, name: str, channels: Sequence[BenchChannel], keys: Keyring
) -> str:
    """A fresh, migrated database holding the workload's tenants and channels."""
    url = await create_database(server_url, name)
    conn = await connect(url)
    try:
        await sql.migrate(conn)
        await seed_channels(conn, channels, keys)
    finally:
        await conn.close()
    return url


async def seed_channels(
    conn: asyncpg.Connection,
    channels: Sequence[BenchChannel],
    keys: Keyring,
    schema: str = "public",
) -> None:
    """Tenants and their Telegram channels, secrets sealed as `channel add` stores them."""
    for ch in channels:
        await conn.execute(
            f"INSERT INTO {schema}.tenants (id, name) VALUES ($1, 'bench')", ch.tenant_id
        )
        await conn.execute(
            f"INSERT INTO {schema}.ingest_channels (id, tenant_id, transport, name, config)"
            " VALUES ($1, $2, 'telegram', 'bench', $3::text::jsonb)",
            ch.channel_id,
            ch.tenant_id,
            json.dumps(seal_config(keys, "telegram", ch.channel_id, {"secret_token": ch.secret})),
        )


async def table_exists(conn: asyncpg.Connection, table: str, schema: str = "public") -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"))


async def count_rows(
    conn: asyncpg.Connection, tables: Sequence[str], schema: str = "public"
) -> dict[str, int]:
    return {t: int(await conn.fetchval(f"SELECT count(*) FROM {schema}.{t}")) for t in tables}


async def delete_topics(settings: Settings, prefixes: Sequence[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()
