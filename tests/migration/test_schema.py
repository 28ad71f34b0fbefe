"""The migrations produce exactly the schema the seed document defines.

The document (copied verbatim from shared/seed/crm-data-model.md) is parsed, not transcribed:
column tables give name, type, NULL-ness and default; the SQL blocks give every index and
foreign key with its ON DELETE. Each is compared with PostgreSQL's catalog after migrating a
fresh database.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

import sql
from sql.db import connect
from tests.support import create_database, migrated_database

pytestmark = pytest.mark.migration

DOC = (Path(__file__).parent / "crm-data-model.md").read_text(encoding="utf-8")
SEED_TABLES = (
    "crm_clients",
    "crm_client_contacts",
    "crm_chats",
    "crm_chat_members",
    "crm_chat_messages",
    "crm_chat_message_attachments",
    "crm_message_templates",
)
# Document type -> (information_schema data_type, character_maximum_length)
TYPES = {
    "SERIAL": ("integer", None),
    "INTEGER": ("integer", None),
    "UUID": ("uuid", None),
    "TEXT": ("text", None),
    "DATE": ("date", None),
    "JSONB": ("jsonb", None),
    "TIMESTAMP": ("timestamp without time zone", None),
}


def documented_columns(table: str) -> dict[str, tuple[str, int | None, bool, str | None]]:
    section = DOC.split(f"### {table}\n", 1)[1].split("\n### ", 1)[0]
    columns = {}
    for name, typ, constraints in re.findall(
        r"^\| `(\w+)` \| ([A-Z0-9()]+) \| ([^|]*) \|", section, re.M
    ):
        varchar = re.fullmatch(r"VARCHAR\((\d+)\)", typ)
        data_type, length = ("character varying", int(varchar.group(1))) if varchar else TYPES[typ]
        nullable = "NOT NULL" not in constraints and "PRIMARY KEY" not in constraints
        if typ == "SERIAL":
            default = f"nextval('{table}_id_seq'::regclass)"
        elif "DEFAULT NOW()" in constraints:
            default = "now()"
        else:
            default = None
        columns[name] = (data_type, length, nullable, default)
    return columns


def documented_indexes() -> dict[str, tuple[str, bool, str]]:
    found = re.findall(r"CREATE (UNIQUE )?INDEX (\w+) ON (\w+)\(([^)]*)\);", DOC)
    return {
        name: (table, bool(unique), cols.replace(" ", "")) for unique, name, table, cols in found
    }


def documented_foreign_keys() -> dict[str, tuple[str, str, str, str, str]]:
    found = re.findall(
        r"ALTER TABLE (\w+)\s+ADD CONSTRAINT (\w+) FOREIGN KEY \((\w+)\)\s+"
        r"REFERENCES (?:public\.)?(\w+)\((\w+)\) ON DELETE (CASCADE|SET NULL|RESTRICT);",
        DOC,
    )
    return {
        name: (table, col, ref, ref_col, rule) for table, name, col, ref, ref_col, rule in found
    }


def test_document_was_parsed_completely() -> None:
    # Guards the parser itself: a regex that silently matched less would weaken every test below.
    assert sum(len(documented_columns(t)) for t in SEED_TABLES) == 15 + 6 + 5 + 10 + 7 + 4 + 4
    assert len(documented_indexes()) == 19
    assert len(documented_foreign_keys()) == 14


@pytest.fixture(scope="module")
async def migrated_url(database_url: str) -> str:
    return await migrated_database(database_url, "schema")


@pytest.mark.parametrize("table", SEED_TABLES)
async def test_columns_match_document(migrated_url: str, table: str) -> None:
    conn = await connect(migrated_url)
    try:
        rows = await conn.fetch(
            """SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1""",
            table,
        )
    finally:
        await conn.close()
    actual = {
        r["column_name"]: (
            r["data_type"],
            r["character_maximum_length"],
            r["is_nullable"] == "YES",
            r["column_default"],
        )
        for r in rows
    }
    assert actual == documented_columns(table)


async def test_documented_indexes_exist_exactly(migrated_url: str) -> None:
    conn = await connect(migrated_url)
    try:
        rows = await conn.fetch(
            """SELECT i.relname AS name, t.relname AS table, ix.indisunique AS unique,
                      pg_get_indexdef(ix.indexrelid) AS definition
               FROM pg_index ix
               JOIN pg_class i ON i.oid = ix.indexrelid
               JOIN pg_class t ON t.oid = ix.indrelid
               WHERE t.relname LIKE 'crm\\_%' AND NOT ix.indisprimary"""
        )
    finally:
        await conn.close()
    actual = {
        r["name"]: (
            r["table"],
            r["unique"],
            re.search(r"\(([^)]*)\)", r["definition"]).group(1).replace(" ", ""),
        )
        for r in rows
    }
    documented = documented_indexes()
    assert {k: actual.get(k) for k in documented} == documented
    # The documented extensions (README, "Schema"): the member upsert's ON CONFLICT arbiter,
    # and the two case-insensitive email probes of find_identities (0015); the arbiters of a
    # reply's sender member, a CRM user's or the automated one (0014).
    assert set(actual) - set(documented) == {
        "idx_crm_chat_members_contact_transport_unique",
        "idx_crm_clients_tenant_lower_email",
        "idx_crm_client_contacts_lower_email",
        "idx_crm_chat_members_user_transport_unique",
        "idx_crm_chat_members_automated_unique",
    }


async def test_outbound_commands_table(migrated_url: str) -> None:
    """The command id decides "executed once"; states are the documented five, and a failed
    or unknown command always says why."""
    conn = await connect(migrated_url)
    try:
        primary = await conn.fetchval(
            """SELECT array_agg(a.attname::text) FROM pg_index ix
               JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = ANY(ix.indkey)
               WHERE ix.indrelid = 'ingest_outbound_commands'::regclass AND ix.indisprimary"""
        )
        checks = await conn.fetch(
            """SELECT pg_get_constraintdef(oid) AS definition FROM pg_constraint
               WHERE conrelid = 'ingest_outbound_commands'::regclass AND contype = 'c'"""
        )
    finally:
        await conn.close()
    assert primary == ["command_id"]
    definitions = " ".join(r["definition"] for r in checks)
    for state in ("pending", "sending", "accepted", "failed", "unknown"):
        assert f"'{state}'" in definitions
    assert "error_code IS NOT NULL" in definitions


async def test_documented_foreign_keys_exist_exactly(migrated_url: str) -> None:
    conn = await connect(migrated_url)
    try:
        rows = await conn.fetch(
            """SELECT con.conname AS name, src.relname AS table, a.attname AS column,
                      dst.relname AS ref, fa.attname AS ref_column, con.confdeltype::text AS rule
               FROM pg_constraint con
               JOIN pg_class src ON src.oid = con.conrelid
               JOIN pg_class dst ON dst.oid = con.confrelid
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
               JOIN pg_attribute fa ON fa.attrelid = con.confrelid AND fa.attnum = con.confkey[1]
               WHERE con.contype = 'f' AND src.relname LIKE 'crm\\_%'"""
        )
    finally:
        await conn.close()
    rules = {"c": "CASCADE", "n": "SET NULL", "r": "RESTRICT", "a": "NO ACTION"}
    actual = {
        r["name"]: (r["table"], r["column"], r["ref"], r["ref_column"], rules[r["rule"]])
        for r in rows
    }
    assert actual == documented_foreign_keys()


async def test_migrate_is_idempotent_and_safe_concurrently(database_url: str) -> None:
    url = await create_database(database_url, "concurrent")
    conns = [await connect(url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(sql.migrate(c) for c in conns))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in sql.load_migrations()]  # each applied exactly once
        assert await sql.migrate(conns[0]) == []
        count = await conns[0].fetchval("SELECT count(*) FROM ingest_schema_migrations")
        assert count == len(sql.load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_changed_migration_is_refused(database_url: str) -> None:
    url = await create_database(database_url, "changed")
    conn = await connect(url)
    try:
        await sql.migrate(conn)
        await conn.execute(
            "UPDATE ingest_schema_migrations SET checksum = repeat('0', 64) WHERE version = '0002'"
        )
        with pytest.raises(sql.MigrationError, match="0002_crm_tables changed"):
            await sql.migrate(conn)
    finally:
        await conn.close()


# crm-ingest's own tables of identity over time (migration 0012; README, "Identity over time"):
# column -> (data type, max length, nullable); foreign keys -> (column, referenced table, ON
# DELETE rule, deferred).
INGEST_IDENTITY_TABLES = {
    "ingest_client_names": {
        "client_id": ("integer", None, False),
        "first_name": ("character varying", 255, False),
        "last_name": ("character varying", 255, True),
        "placeholder": ("boolean", None, False),
        "source": ("character varying", 50, False),
        "version": ("bigint", None, False),
        "updated_at": ("timestamp without time zone", None, False),
    },
    "ingest_identity_conflicts": {
        "tenant_id": ("uuid", None, False),
        "contact_type": ("character varying", 50, False),
        "contact_value": ("character varying", 255, False),
        "linked_value": ("character varying", 255, False),
        "client_id": ("integer", None, False),
        "linked_client_id": ("integer", None, False),
        "source_event_id": ("uuid", None, False),
        "detected_at": ("timestamp without time zone", None, False),
    },
}
INGEST_IDENTITY_KEYS = {
    "ingest_client_names": {("client_id", "crm_clients", "CASCADE", True)},
    "ingest_identity_conflicts": {
        ("tenant_id", "tenants", "CASCADE", False),
        ("client_id", "crm_clients", "CASCADE", False),
        ("linked_client_id", "crm_clients", "CASCADE", False),
    },
}
INGEST_IDENTITY_PRIMARY_KEYS = {
    "ingest_client_names": "client_id",
    "ingest_identity_conflicts": "tenant_id,contact_type,contact_value,linked_value",
}


@pytest.mark.parametrize("table", sorted(INGEST_IDENTITY_TABLES))
async def test_identity_over_time_tables(migrated_url: str, table: str) -> None:
    conn = await connect(migrated_url)
    try:
        columns = await conn.fetch(
            """SELECT column_name, data_type, character_maximum_length, is_nullable
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1""",
            table,
        )
        keys = await conn.fetch(
            """SELECT a.attname AS column, dst.relname AS ref, con.confdeltype::text AS rule,
                      con.condeferred AS deferred
               FROM pg_constraint con
               JOIN pg_class src ON src.oid = con.conrelid
               JOIN pg_class dst ON dst.oid = con.confrelid
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
               WHERE con.contype = 'f' AND src.relname = $1""",
            table,
        )
        primary = await conn.fetchval(
            """SELECT pg_get_indexdef(ix.indexrelid) FROM pg_index ix
               JOIN pg_class t ON t.oid = ix.indrelid
               WHERE t.relname = $1 AND ix.indisprimary""",
            table,
        )
    finally:
        await conn.close()
    assert {
        r["column_name"]: (
            r["data_type"],
            r["character_maximum_length"],
            r["is_nullable"] == "YES",
        )
        for r in columns
    } == INGEST_IDENTITY_TABLES[table]
    rules = {"c": "CASCADE", "n": "SET NULL", "r": "RESTRICT", "a": "NO ACTION"}
    assert {
        (r["column"], r["ref"], rules[r["rule"]], r["deferred"]) for r in keys
    } == INGEST_IDENTITY_KEYS[table]
    assert (
        re.search(r"\(([^)]*)\)", primary).group(1).replace(" ", "")
        == (INGEST_IDENTITY_PRIMARY_KEYS[table])
    )


# crm-ingest's own fetch-job table (migration 0011), as the README's Media section describes it:
# column -> (data_type, nullable, default).
MEDIA_JOB_COLUMNS = {
    "upload_id": ("integer", False, None),
    "message_id": ("integer", False, None),
    "channel_id": ("uuid", False, None),
    "tenant_id": ("uuid", False, None),
    "transport": ("character varying", False, None),
    "status": ("character varying", False, "'pending'::character varying"),
    "attempts": ("integer", False, "0"),
    "next_attempt_at": ("timestamp without time zone", False, "now()"),
    "lease": ("uuid", True, None),
    "leased_until": ("timestamp without time zone", True, None),
    "last_error": ("character varying", True, None),
    "queued_at": ("timestamp without time zone", False, "now()"),
    "created_at": ("timestamp without time zone", False, "now()"),
    "updated_at": ("timestamp without time zone", False, "now()"),
}
# column -> (referenced table, ON DELETE, deferred until commit)
MEDIA_JOB_FOREIGN_KEYS = {
    "upload_id": ("core_uploads", "c", True),
    "message_id": ("crm_chat_messages", "c", True),
    "channel_id": ("ingest_channels", "c", False),
    "tenant_id": ("tenants", "c", False),
}
MEDIA_JOB_INDEXES = {
    "ingest_media_jobs_pkey": "(upload_id)",
    "idx_ingest_media_jobs_due": "(next_attempt_at) WHERE ((status)::text = 'pending'::text)",
    "idx_ingest_media_jobs_leased": (
        "(channel_id) WHERE (((status)::text = 'pending'::text) AND (lease IS NOT NULL))"
    ),
    "idx_ingest_media_jobs_failed": "(upload_id) WHERE ((status)::text = 'failed'::text)",
    "idx_ingest_media_jobs_message_id": "(message_id)",
    "idx_ingest_media_jobs_channel_id": "(channel_id)",
    # 0017: stored jobs in time order, for pruning them after their retention.
    "idx_ingest_media_jobs_stored": "(updated_at) WHERE ((status)::text = 'stored'::text)",
}


async def test_media_jobs_table(migrated_url: str) -> None:
    conn = await connect(migrated_url)
    try:
        columns = await conn.fetch(
            """SELECT column_name, data_type, is_nullable, column_default
               FROM information_schema.columns WHERE table_name = 'ingest_media_jobs'"""
        )
        keys = await conn.fetch(
            """SELECT a.attname AS column, dst.relname AS ref, con.confdeltype::text AS rule,
                      con.condeferred AS deferred
               FROM pg_constraint con
               JOIN pg_class src ON src.oid = con.conrelid
               JOIN pg_class dst ON dst.oid = con.confrelid
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
               WHERE con.contype = 'f' AND src.relname = 'ingest_media_jobs'"""
        )
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ingest_media_jobs'"
        )
    finally:
        await conn.close()
    assert {
        r["column_name"]: (r["data_type"], r["is_nullable"] == "YES", r["column_default"])
        for r in columns
    } == MEDIA_JOB_COLUMNS
    assert {r["column"]: (r["ref"], r["rule"], r["deferred"]) for r in keys} == (
        MEDIA_JOB_FOREIGN_KEYS
    )
    assert {
        r["indexname"]: r["indexdef"].split(" USING btree ", 1)[1] for r in indexes
    } == MEDIA_JOB_INDEXES


@pytest.mark.parametrize(
    ("status", "lease", "leased_until"),
    [("done", None, None), ("pending", "gen_random_uuid()", "NULL"), ("pending", "NULL", "now()")],
)
async def test_media_job_status_and_lease_are_constrained(
    migrated_url: str, status: str, lease: str | None, leased_until: str | None
) -> None:
    conn = await connect(migrated_url)
    try:
        async with conn.transaction():
            tenant = await conn.fetchval(
                "INSERT INTO tenants (id) VALUES (gen_random_uuid()) RETURNING id"
            )
            channel = await conn.fetchval(
                "INSERT INTO ingest_channels (tenant_id, transport) VALUES ($1, 'telegram')"
                " RETURNING id",
                tenant,
            )
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    f"""INSERT INTO ingest_media_jobs
                        (upload_id, message_id, channel_id, tenant_id, transport, status, lease,
                         leased_until)
                        VALUES (1, 1, $1, $2, 'telegram', $3, {lease or "NULL"},
                                {leased_until or "NULL"})""",
                    channel,
                    tenant,
                    status,
                )
            raise Rollback
    except Rollback:
        pass
    finally:
        await conn.close()


class Rollback(Exception):
    """Leaves the test's rows behind no commit."""


async def test_rows_updated_with_every_message_have_room_for_a_hot_update(
    migrated_url: str,
) -> None:
    """0016: the identity's meta_version and the chat's last_message_at move with each message;
    free space on their pages keeps those updates HOT (no index entries)."""
    conn = await connect(migrated_url)
    try:
        options = {
            r["relname"]: r["reloptions"]
            for r in await conn.fetch(
                """SELECT relname, reloptions FROM pg_class
                   WHERE relname IN ('ingest_identities', 'crm_chats')"""
            )
        }
    finally:
        await conn.close()
    assert options == {
        "ingest_identities": ["fillfactor=70"],
        "crm_chats": ["fillfactor=70"],
    }
