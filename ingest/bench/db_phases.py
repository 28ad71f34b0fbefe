"""PostgreSQL side of the bench: the COPY ceiling (phase b), the per-event baseline (phase c),
the service's consumer end to end (phase d) and its write path without Kafka (phase s), each
checking its rows afterwards."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from handlers.identities import is_placeholder
from handlers.ingestor import Backoff, Ingestor, Record
from handlers.media.jobs import media_job
from handlers.pg import naive_utc, pg_text
from handlers.replay import StoredRecord
from handlers.store import upload_row
from ingest.bench import statements
from ingest.bench.children import Child, children, settings_env
from ingest.bench.kafka_phases import wait_committed
from ingest.bench.measure import (
    IDLE_TIMEOUT_S,
    BenchError,
    PhaseResult,
    cpu_share,
    cpu_snapshot,
)
from ingest.bench.rows import OUTBOX, final_rows, verify_rows
from ingest.bench.services import count_rows, seed_channels, table_exists
from ingest.bench.workload import Workload
from ingest.config import Settings
from ingest.credentials import Keyring
from ingest.events import MessageEvent, decode_event
from ingest.process import settle_heap
from sql.db import connect, create_pool, pooled

SCRATCH = "bench_scratch"

# --- b. DB ceiling -------------------------------------------------------------------------


async def _scratch_schema(conn: asyncpg.Connection, tables: Sequence[str]) -> None:
    """`LIKE ... INCLUDING ALL` copies of the public tables, plus their foreign keys (to the
    scratch copies where there is one, else to the public table)."""
    fks = await conn.fetch(
        """SELECT c.conrelid::regclass::text AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def
           FROM pg_constraint c WHERE c.contype = 'f'
             AND c.conrelid = ANY(SELECT to_regclass('public.' || t) FROM unnest($1::text[]) t)""",
        list(tables),
    )
    await conn.execute(f"DROP SCHEMA IF EXISTS {SCRATCH} CASCADE; CREATE SCHEMA {SCRATCH}")
    for table in tables:
        await conn.execute(f"CREATE TABLE {SCRATCH}.{table} (LIKE public.{table} INCLUDING ALL)")
    await conn.execute(f"SET search_path = {SCRATCH}, public")
    try:
        for fk in fks:
            table = fk["tbl"].removeprefix("public.")
            await conn.execute(
                f'ALTER TABLE {SCRATCH}.{table} ADD CONSTRAINT "{fk["conname"]}" {fk["def"]}'
            )
    finally:
        await conn.execute("SET search_path = public")


def _prefixed(prefix: bytes, text: str) -> bytes:
    return prefix + text.encode()


def _unprefixed(skip: int, data: bytes) -> str:
    return data[skip:].decode()


async def db_ceiling(
    url: str, workload: Workload, batch_records: int, keys: Keyring
) -> PhaseResult:
    """COPY of the final rows into same-shaped tables (indexes, defaults, FKs) in one
    transaction on one connection: what PostgreSQL alone can absorb on this machine. Chat
    events fill one outbox row per consumer batch of `batch_records`, as the consumer's do."""
    conn = await connect(url)
    try:
        # Binary COPY of json/jsonb: the JSON text (jsonb after a format version byte), which
        # is serialized before the clock starts (the ceiling is PostgreSQL's, not json.dumps').
        for typename, prefix in (("json", b""), ("jsonb", b"\x01")):
            await conn.set_type_codec(
                typename,
                encoder=functools.partial(_prefixed, prefix),
                decoder=functools.partial(_unprefixed, len(prefix)),
                schema="pg_catalog",
                format="binary",
            )
        outbox = await table_exists(conn, OUTBOX)
        transactions = -(-len(workload.deliveries) // batch_records)
        rows = final_rows(workload, outbox=outbox, transactions=transactions)
        for table, column in (("crm_chat_members", "transport_meta"), (OUTBOX, "events")):
            if table in rows:
                columns, records = rows[table]
                at = columns.index(column)
                rows[table] = (
                    columns,
                    [(*r[:at], json.dumps(r[at]), *r[at + 1 :]) for r in records],
                )
        if outbox:  # seq values: BIGSERIAL in the service, assigned here
            rows[OUTBOX] = (
                rows[OUTBOX][0],
                [(i + 1, *r[1:]) for i, r in enumerate(rows[OUTBOX][1])],
            )
        await _scratch_schema(conn, ["tenants", "ingest_channels", *rows])
        await seed_channels(conn, workload.channels, keys, SCRATCH)
        before = cpu_snapshot()
        started = time.perf_counter()
        async with conn.transaction():
            for table, (columns, records) in rows.items():
                if records:
                    await conn.copy_records_to_table(
                        table, records=records, columns=columns, schema_name=SCRATCH
                    )
        seconds = time.perf_counter() - started
        after = cpu_snapshot()
        counts = await count_rows(conn, list(rows), SCRATCH)
        await conn.execute(f"DROP SCHEMA {SCRATCH} CASCADE")
    finally:
        await conn.close()
    wrong = {t: (counts[t], len(r)) for t, (_, r) in rows.items() if counts[t] != len(r)}
    if wrong:
        raise BenchError(f"db ceiling: COPY lost rows: {wrong}")
    total = sum(counts.values())
    return PhaseResult(
        f"b  DB ceiling (COPY {total:,} rows)",
        len(workload.deliveries),
        seconds,
        {
            "rows": total,
            "rows_per_s": round(total / seconds, 1),
            "tables": counts,
            "cpu_share": cpu_share(before, after, seconds),
        },
    )


# --- c. per-event baseline -----------------------------------------------------------------

_FIND_CONTACT = """SELECT cc.id, cc.client_id FROM crm_client_contacts cc
    JOIN crm_clients c ON c.id = cc.client_id
    WHERE c.tenant_id = $1 AND cc.contact_type = $2 AND cc.contact_value = $3 LIMIT 1"""
_INSERT_CLIENT = """INSERT INTO crm_clients (tenant_id, first_name, last_name, phone_number, email)
    VALUES ($1, $2, $3, $4, $5) RETURNING id"""
_INSERT_NAME = """INSERT INTO ingest_client_names
    (client_id, first_name, last_name, placeholder, source, version)
    VALUES ($1, $2, $3, $4, $5, $6)"""
_INSERT_CONTACT = """INSERT INTO crm_client_contacts (client_id, contact_type, contact_value)
    VALUES ($1, $2, $3) RETURNING id"""
_INSERT_IDENTITY = """INSERT INTO ingest_identities
    (tenant_id, contact_type, contact_value, client_id, contact_id, meta_version)
    VALUES ($1, $2, $3, $4, $5, $6)"""
_FIND_CHAT = "SELECT id FROM crm_chats WHERE tenant_id = $1 AND client_id = $2"
_INSERT_CHAT = "INSERT INTO crm_chats (tenant_id, client_id) VALUES ($1, $2) RETURNING id"
_FIND_MEMBER = """SELECT id FROM crm_chat_members
    WHERE chat_id = $1 AND client_contact_id = $2 AND transport = $3"""
_INSERT_MEMBER = """INSERT INTO crm_chat_members
    (id, tenant_id, chat_id, client_id, client_contact_id, transport, transport_meta)
    VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6) RETURNING id"""
_FIND_REF = "SELECT message_id FROM ingest_message_refs WHERE channel_id = $1 AND external_id = $2"
_INSERT_MESSAGE = """INSERT INTO crm_chat_messages (chat_id, sender_id, message, sent_at)
    VALUES ($1, $2, $3, $4) RETURNING id"""
_INSERT_REF = """INSERT INTO ingest_message_refs (channel_id, external_id, message_id, version)
    VALUES ($1, $2, $3, $4)"""
_INSERT_UPLOAD = """INSERT INTO core_uploads (tenant_id, hash, path, name, size, mimetype)
    VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"""
_INSERT_LINK = "INSERT INTO crm_chat_message_attachments (message_id, upload_id) VALUES ($1, $2)"
_INSERT_JOB = """INSERT INTO ingest_media_jobs
    (upload_id, message_id, channel_id, tenant_id, transport) VALUES ($1, $2, $3, $4, $5)"""
_ADVANCE = """UPDATE crm_chats SET last_message_at = $2
    WHERE id = $1 AND (last_message_at IS NULL OR last_message_at < $2)"""


async def _per_event(conn: asyncpg.Connection, e: MessageEvent) -> None:
    s = e.sender
    async with conn.transaction():
        found = await conn.fetchrow(_FIND_CONTACT, e.tenant_id, s.contact_type, s.contact_value)
        if found is None:
            client_id = await conn.fetchval(
                _INSERT_CLIENT, e.tenant_id, s.first_name, s.last_name, s.phone_e164, s.email
            )
            named = (s.first_name, s.last_name, is_placeholder(s), s.contact_type, e.version)
            await conn.execute(_INSERT_NAME, client_id, *named)
            contact_id = await conn.fetchval(
                _INSERT_CONTACT, client_id, s.contact_type, s.contact_value
            )
            await conn.execute(
                _INSERT_IDENTITY,
                *(e.tenant_id, s.contact_type, s.contact_value, client_id, contact_id, e.version),
            )
        else:
            contact_id, client_id = found["id"], found["client_id"]
        chat_id = await conn.fetchval(_FIND_CHAT, e.tenant_id, client_id)
        if chat_id is None:
            chat_id = await conn.fetchval(_INSERT_CHAT, e.tenant_id, client_id)
        member = await conn.fetchval(_FIND_MEMBER, chat_id, contact_id, e.transport)
        if member is None:
            member = await conn.fetchval(
                _INSERT_MEMBER, e.tenant_id, chat_id, client_id, contact_id, e.transport,
                e.member_meta,
            )  # fmt: skip
        if await conn.fetchval(_FIND_REF, e.channel_id, e.external_message_id) is not None:
            return
        sent_at = naive_utc(e.sent_at)
        message_id = await conn.fetchval(_INSERT_MESSAGE, chat_id, member, pg_text(e.text), sent_at)
        await conn.execute(_INSERT_REF, e.channel_id, e.external_message_id, message_id, e.version)
        for a in e.attachments:
            row = upload_row(message_id, e, a)
            upload_id = await conn.fetchval(_INSERT_UPLOAD, *row[1:])
            await conn.execute(_INSERT_LINK, message_id, upload_id)
            channel, transport, fetch = media_job(e, path=row[3])
            if fetch:
                await conn.execute(
                    _INSERT_JOB, upload_id, message_id, channel, e.tenant_id, transport
                )
        await conn.execute(_ADVANCE, chat_id, sent_at)


async def baseline(url: str, workload: Workload, sample: int) -> PhaseResult:
    """The first `sample` deliveries, each decoded and written in its own transaction through
    straightforward select-then-insert SQL on one connection."""
    expected = workload.expected(sample)
    conn = await connect(url)
    try:
        before = cpu_snapshot()
        started = time.perf_counter()
        for d in workload.deliveries[:sample]:
            event = decode_event(d.value)
            assert isinstance(event, MessageEvent)
            await _per_event(conn, event)
        seconds = time.perf_counter() - started
        after = cpu_snapshot()
        await verify_rows(conn, workload, expected, "baseline")
    finally:
        await conn.close()
    share = sample / len(workload.deliveries)
    return PhaseResult(
        f"c  per-event baseline ({share:.0%} sample)",
        sample,
        seconds,
        {"sample": sample, "cpu_share": cpu_share(before, after, seconds)},
    )


# --- d. the service's consumer -------------------------------------------------------------


async def consumer_e2e(
    settings: Settings, workload: Workload, partitions: dict[str, int], processes: int
) -> PhaseResult:
    """`processes` x `crm-ingest consume` (one consumer group, as deployed: one process per
    core) on a fresh database, from the beginning of the topic until every expected message
    row is committed; then rows and committed offsets are verified.

    Timed from the first batch's transaction (the smallest `created_at`, PostgreSQL's
    transaction start) to the poll that saw the last row, on PostgreSQL's clock: start-up and
    the group join are left out, the first batch's decode too (one batch), and up to one poll
    interval (50 ms) is added."""
    expected = workload.expected()
    env = settings_env(settings) | {"CRM_INGEST_METRICS_PORT": "0"}
    consume = [sys.executable, "-m", "ingest.cli", "consume"]
    conn = await connect(settings.database_url)
    with (
        tempfile.TemporaryDirectory(prefix="crm-ingest-bench-") as tmp,
        children(Path(tmp)) as kids,
    ):
        try:
            spawned = time.perf_counter()
            for i in range(processes):
                kids.append(Child(f"consumer-{i}", consume, env, Path(tmp)))
            count, progress, cpu_at_first, first_seen = -1, time.monotonic(), None, 0.0
            count_at_first = 0
            while count < expected.events:
                await asyncio.sleep(0.05)
                now_count = int(await conn.fetchval("SELECT count(*) FROM ingest_message_refs"))
                if now_count and cpu_at_first is None:
                    cpu_at_first, first_seen = cpu_snapshot(), time.perf_counter()
                    count_at_first = now_count
                if now_count != count:
                    count, progress = now_count, time.monotonic()
                elif time.monotonic() - progress > IDLE_TIMEOUT_S or any(
                    kid.proc.poll() is not None for kid in kids
                ):
                    tails = "\n".join(kid.tail() for kid in kids)
                    raise BenchError(
                        f"consumer: stalled at {count} of {expected.events} messages\n{tails}"
                    )
            seconds = float(
                await conn.fetchval(
                    "SELECT extract(epoch FROM clock_timestamp()"
                    " - (SELECT min(created_at) FROM crm_chat_messages) AT TIME ZONE 'UTC')"
                )
            )
            done = time.perf_counter()
            cpu_at_end = cpu_snapshot()
            rows = await verify_rows(conn, workload, expected, "consumer")
            outbox = None
            if await table_exists(conn, OUTBOX):
                outbox = await conn.fetchrow(
                    "SELECT count(*) AS n, coalesce(sum(json_array_length(events)), 0) AS events,"
                    " count(*) FILTER (WHERE published_at IS NULL) AS pending"
                    f" FROM {OUTBOX}"
                )
            offsets = await wait_committed(settings, partitions)
            batches = [kid.tail(1 << 26).count('"batch committed"') for kid in kids]
        finally:
            await conn.close()
    shares = cpu_share(cpu_at_first or {}, cpu_at_end, done - first_seen)
    measured = max(1.0, len(workload.deliveries) * (1 - count_at_first / expected.events))
    extra: dict[str, Any] = {
        "processes": processes,
        "timing": "first transaction to last row seen (PostgreSQL clock)",
        "from_start_s": round(done - spawned, 3),
        "batches_per_process": batches,
        "batch_size_mean": round(len(workload.deliveries) / max(1, sum(batches)), 1),
        "cpu_share": shares,
        # CPU per delivered record, by process kind, over the records stored after the first
        # poll that saw rows: the figure to hold against the 2 cores / target rate.
        "cpu_us_per_event": {
            kind: round(share * (done - first_seen) / measured * 1e6, 1)
            for kind, share in shares.items()
        },
        "rows": rows,
        "offsets_committed": sum(offsets.values()),
        "settings": {
            "batch_max_records": settings.batch_max_records,
            "batch_timeout_ms": settings.batch_timeout_ms,
            "db_pool_max": settings.db_pool_max,
        },
    }
    if outbox is not None:
        extra["outbox_rows"] = int(outbox["n"])
        extra["outbox_chat_events"] = int(outbox["events"])
        extra["outbox_rows_pending_at_end"] = int(outbox["pending"])
    return PhaseResult("d  consumer end to end", len(workload.deliveries), seconds, extra)


# --- s. the consumer's write path alone ----------------------------------------------------


async def no_dead_letters(record: Record, exc: BaseException) -> None:
    raise BenchError(f"sql path: record at offset {record.offset} dead-lettered: {exc!r}")


async def sql_path(url: str, workload: Workload, batch_records: int) -> PhaseResult:
    """Every delivery, in batches of the consumer's size, through the consumer's `Ingestor`
    (decode, validation, the batch SQL, the outbox) on one connection in this process: no
    Kafka, no relay, no second process. What PostgreSQL spends per event here is the floor
    for phase d, whatever happens around the database."""
    expected = workload.expected()
    records = [
        StoredRecord("bench", 0, offset, d.key, d.value, d.headers)
        for offset, d in enumerate(workload.deliveries)
    ]
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        ingestor = Ingestor(pool, no_dead_letters, Backoff())
        async with pool.acquire() as conn:
            by_statement = await statements.start(pooled(conn))
        settle_heap()  # as the consumer does; this process holds the whole workload
        before = cpu_snapshot()
        started = time.perf_counter()
        for start in range(0, len(records), batch_records):
            await ingestor.handle(records[start : start + batch_records])
        seconds = time.perf_counter() - started
        after = cpu_snapshot()
        async with pool.acquire() as conn:
            spent = await statements.per_event(pooled(conn), len(records)) if by_statement else None
            rows = await verify_rows(pooled(conn), workload, expected, "sql path")
    finally:
        await pool.close()
    shares = cpu_share(before, after, seconds)
    return PhaseResult(
        "s  consumer SQL path (no Kafka)",
        len(records),
        seconds,
        {
            "connections": 1,
            "batch_records": batch_records,
            "cpu_share": shares,
            # "bench" is the consumer's Python here: decode, validation, batch bookkeeping.
            "cpu_us_per_event": {
                kind: round(share * seconds / len(records) * 1e6, 1)
                for kind, share in shares.items()
            },
            "rows": rows,
            "postgres_by_statement": spent,
        },
    )
