"""Migrations that reshape tables keep the rows a running service already wrote."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

import sql
from sql.db import connect
from tests.support import create_database, migrated_database

pytestmark = pytest.mark.integration


async def _migrate_until(conn: asyncpg.Connection, version: str) -> None:
    """Apply and record the migrations before `version`, as an older release would have."""
    await conn.execute(sql.QUERIES["create_migrations_table"])
    for migration in sql.load_migrations():
        if migration.version >= version:
            return
        await conn.execute(migration.sql)
        await conn.execute(
            sql.QUERIES["record_migration"], migration.version, migration.name, migration.checksum
        )


async def test_outbox_rows_per_event_become_rows_per_transaction(database_url: str) -> None:
    conn = await connect(await create_database(database_url, "outbox_0008"))
    try:
        await _migrate_until(conn, "0008")
        old = [
            (uuid.uuid4(), "chat.created", {"event_id": "a", "chat_id": 1}, uuid.uuid4(), True),
            (uuid.uuid4(), "message.created", {"event_id": "b", "chat_id": 1}, uuid.uuid4(), False),
            (uuid.uuid4(), "message.created", {"event_id": "c", "chat_id": 2}, None, False),
        ]
        for event_id, event_type, payload, source, published in old:
            await conn.execute(
                """INSERT INTO ingest_outbox
                       (event_id, event_type, kafka_key, payload, source_event_id, published_at)
                   VALUES ($1, $2, 'k', $3, $4, CASE WHEN $5 THEN NOW() END)""",
                event_id,
                event_type,
                payload,
                source,
                published,
            )

        assert (await sql.migrate(conn))[0] == "0008"

        rows = await conn.fetch(
            "SELECT seq, events::text AS events, source_event_ids, published_at"
            " FROM ingest_outbox ORDER BY seq"
        )
        assert [json.loads(r["events"]) for r in rows] == [[p] for _, _, p, _, _ in old]
        assert [r["source_event_ids"] for r in rows] == [[s] for _, _, _, s, _ in old]
        assert [r["published_at"] is not None for r in rows] == [p for *_, p in old]
        pending = await conn.fetch(sql.QUERIES["pending_chat_events"], 10)
        assert [r["seq"] for r in pending] == [r["seq"] for r in rows[1:]]
        # The sequence continues after the moved rows.
        seq = await conn.fetchval(
            "INSERT INTO ingest_outbox (events, source_event_ids) VALUES ('[]', '{}') RETURNING seq"
        )
        assert seq > rows[-1]["seq"]
    finally:
        await conn.close()


async def test_outbox_refuses_anything_but_an_array_of_events(database_url: str) -> None:
    conn = await connect(await migrated_database(database_url, "outbox_check"))
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO ingest_outbox (events, source_event_ids) VALUES ('{}', '{}')"
            )
    finally:
        await conn.close()


async def test_plaintext_channel_secrets_are_encrypted_once(database_url: str) -> None:
    """Channels written before secrets were sealed: `crm-ingest migrate` seals their secrets,
    leaves non-secret keys readable, and a second run changes nothing."""
    from ingest import admin
    from ingest.config import load_settings
    from ingest.credentials import PREFIX, keyring, open_config

    url = await migrated_database(database_url, "plaintext_secrets")
    legacy = {"app_secret": "legacy-app-secret-1234", "verify_token": "v", "phone_number_id": "42"}
    conn = await connect(url)
    try:
        tenant, channel = uuid.uuid4(), uuid.uuid4()
        await conn.execute(sql.QUERIES["insert_tenant"], tenant, "legacy")
        await conn.execute(
            "INSERT INTO ingest_channels (id, tenant_id, transport, name, config)"
            " VALUES ($1, $2, 'whatsapp', '', $3::jsonb)",
            channel,
            tenant,
            legacy,
        )
        keys = keyring(load_settings())
        assert (await admin.migrate(url, keys))["channels_encrypted"] == 1
        stored = await conn.fetchval("SELECT config FROM ingest_channels WHERE id = $1", channel)
        assert stored["phone_number_id"] == "42"
        assert stored["app_secret"].startswith(PREFIX)
        assert stored["verify_token"].startswith(PREFIX)
        assert "legacy-app-secret-1234" not in json.dumps(stored)
        assert open_config(keys, "whatsapp", channel, stored).config == legacy
        assert (await admin.migrate(url, keys))["channels_encrypted"] == 0
        again = await conn.fetchval("SELECT config FROM ingest_channels WHERE id = $1", channel)
        assert again == stored
    finally:
        await conn.close()


async def test_clients_named_by_an_identifier_get_a_placeholder_name_record(
    database_url: str,
) -> None:
    conn = await connect(await create_database(database_url, "names_0012"))
    try:
        await _migrate_until(conn, "0012")
        tenant = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 't')", tenant)
        clients = {}
        for first_name, phone, value in [
            ("+15550001111", "+15550001111", "+15550001111"),  # SMS: named by its number
            ("US.1", None, "US.1"),  # username-only WhatsApp: named by its user id
            ("Ann", "+15550002222", "+15550002222"),  # a real name: ours or the host's
            ("+15550003333", "+15550003333", None),  # the host's client, no identity
        ]:
            client_id = await conn.fetchval(
                "INSERT INTO crm_clients (tenant_id, first_name, phone_number)"
                " VALUES ($1, $2, $3) RETURNING id",
                tenant,
                first_name,
                phone,
            )
            clients[first_name] = client_id
            if value is not None:
                contact_id = await conn.fetchval(
                    "INSERT INTO crm_client_contacts (client_id, contact_type, contact_value)"
                    " VALUES ($1, 'whatsapp', $2) RETURNING id",
                    client_id,
                    value,
                )
                await conn.execute(
                    "INSERT INTO ingest_identities"
                    " (tenant_id, contact_type, contact_value, client_id, contact_id)"
                    " VALUES ($1, 'whatsapp', $2, $3, $4)",
                    tenant,
                    value,
                    client_id,
                    contact_id,
                )

        assert (await sql.migrate(conn))[0] == "0012"

        rows = await conn.fetch(
            "SELECT client_id, first_name, placeholder, source, version"
            " FROM ingest_client_names ORDER BY client_id"
        )
        assert [tuple(r.values()) for r in rows] == [
            (clients["+15550001111"], "+15550001111", True, "whatsapp", 0),
            (clients["US.1"], "US.1", True, "whatsapp", 0),
        ]
    finally:
        await conn.close()
