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
