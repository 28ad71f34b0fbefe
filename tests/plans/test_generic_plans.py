"""Every statement of the batch path stays exact under its generic plan, whatever the tenant's
size: bounded buffers and index entries per input row.

A long-lived pooled connection ends up running each prepared statement with its generic plan
(`plan_cache_mode = force_generic_plan` forces it here), planned without the parameters:
unnest is estimated at 10 rows. A probe that reads a range instead of one key then costs
per event what the tenant holds. The database has one large tenant among small ones and a
batch of 500 events of the large one: known senders (some with attachments, some edits, some
members whose meta is unchanged), new senders by Telegram, email and WhatsApp, and statuses.
It runs twice, on the same data: before the first ANALYZE (a new or restored database, before
autovacuum gets to it; the reported run was there) and ANALYZEd.

The batch runs through `handlers.ingestor.apply_batch`, the consumer's own code, so the
statements and their arguments are the product's; each is EXPLAINed (ANALYZE, BUFFERS) once
in a savepoint that is rolled back, then run, and the whole transaction is rolled back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import asyncpg
import pytest

import sql
from handlers.ingestor import apply_batch
from ingest.embedded import ResolvedServices
from ingest.events import (
    Attachment,
    MessageEvent,
    Sender,
    StatusEvent,
    conversation_key,
    make_event_id,
)
from sql.db import connect, create_pool
from tests.integration.pipeline import TenantChannel, new_channel
from tests.plans.explained import Explained, ExplainingConnection
from tests.support import migrated_database

pytestmark = pytest.mark.integration

POPULATION = sql.parse_queries((Path(__file__).parent / "population.sql").read_text("utf-8"))
LARGE_TENANT = 50_000  # known senders; the defects read all of them per event
SMALL_TENANTS, SMALL_TENANT = 20, 200
BATCH = 500
BASE_USER_ID = 8_000_000_000  # population.sql's user ids: BASE_USER_ID + n, n from 1
# What an exact probe costs: a B-tree descent per index touched (insertions into every index
# included) plus the heap page. The largest today is upsert_members, about 40 buffers per row.
BUFFERS_PER_ROW = 60
ENTRIES_PER_ROW = 4
# Every statement the batch path runs: the batch must reach all of them.
HOT = {
    "find_identities",
    "rename_clients",
    "allocate_client_ids",
    "claim_identities",
    "insert_clients",
    "insert_contacts",
    "find_chats",
    "insert_chats",
    "upsert_members",
    "find_members",
    "upsert_message_refs",
    "insert_messages",
    "update_message_texts",
    "insert_attachments",
    "advance_last_message_at",
    "log_statuses",
    "settle_statuses",
    "enqueue_chat_events",
}

Statistics = Literal["before first ANALYZE", "ANALYZEd"]


async def populate(services: ResolvedServices, statistics: Statistics) -> tuple[str, TenantChannel]:
    """A migrated database with the tenants; returns its URL and the large tenant's channel."""
    url = await migrated_database(services.database_url, "plans")
    conn = await connect(url)
    pool = await create_pool(url, max_size=1)
    try:
        await conn.execute(POPULATION["pause_autovacuum"])  # it would ANALYZE within a minute
        large = await new_channel(pool, "telegram")
        fill = POPULATION["populate_known_senders"]
        await conn.execute(fill, large.tenant_id, large.channel_id, LARGE_TENANT)
        for _ in range(SMALL_TENANTS):
            small = await new_channel(pool, "telegram")
            await conn.execute(fill, small.tenant_id, small.channel_id, SMALL_TENANT)
        if statistics == "ANALYZEd":
            await conn.execute("VACUUM ANALYZE")
    finally:
        await pool.close()
        await conn.close()
    return url, large


def message(
    channel: TenantChannel, n: int, k: int, *, kind: str = "telegram", **extra: Any
) -> MessageEvent:
    """Message `k` of sender `n` (population.sql's numbering; past LARGE_TENANT: new senders)."""
    user = str(BASE_USER_ID + n)
    sent = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=10 * n + k)
    sender = {
        "telegram": Sender(contact_type="telegram", contact_value=user, first_name=f"Known {n}"),
        "email": Sender(
            contact_type="email",
            contact_value=f"new{n}@example.org",
            first_name=f"New {n}",
            email=f"New{n}@Example.org",
        ),
        "whatsapp": Sender(
            contact_type="whatsapp",
            contact_value=f"+4420{n:07d}",
            first_name=f"New {n}",
            phone_e164=f"+4420{n:07d}",
        ),
    }[kind]
    fields: dict[str, Any] = {
        "event_id": make_event_id(channel.channel_id, "plans", n, k),
        "tenant_id": channel.tenant_id,
        "channel_id": channel.channel_id,
        "transport": "telegram",
        "conversation_key": conversation_key(channel.tenant_id, "telegram", user),
        "received_at": sent,
        "event_type": "message.received",
        "external_message_id": f"{user}:{k}",
        "version": int(sent.timestamp() * 1000),
        "sent_at": sent,
        "sender": sender,
        "text": f"message {k} of {n}",
        "member_meta": {"chat_id": int(user), "chat_type": "private"},
    }
    return MessageEvent(**{**fields, **extra})


def batch(channel: TenantChannel) -> list[MessageEvent | StatusEvent]:
    """500 events of the large tenant, each kind of work the batch path does."""
    known = range(1, LARGE_TENANT, LARGE_TENANT // 450)  # spread over the tenant's range
    events: list[MessageEvent | StatusEvent] = []
    for i, n in enumerate(known):
        if i % 10 == 0:  # an edit of the populated message
            events.append(message(channel, n, 1, event_type="message.edited"))
        elif i % 10 == 1:
            photo = Attachment(kind="photo", provider_ref=f"file-{n}", size_bytes=1000)
            events.append(message(channel, n, 2, attachments=[photo]))
        elif i % 10 == 2:  # nothing new about the member: upsert_members leaves it alone
            events.append(message(channel, n, 2, member_meta={}))
        else:
            events.append(message(channel, n, 2))
    kinds = ("telegram", "email", "whatsapp")
    new = LARGE_TENANT + 1
    events += [message(channel, new + j, 1, kind=kinds[j % 3]) for j in range(40)]
    at = datetime(2026, 2, 1, tzinfo=UTC)
    for j, n in enumerate(known[: BATCH - len(events)]):
        user = str(BASE_USER_ID + n)
        events.append(
            StatusEvent(
                event_id=uuid.uuid5(channel.channel_id, f"status-{n}"),
                tenant_id=channel.tenant_id,
                channel_id=channel.channel_id,
                transport="telegram",
                conversation_key=conversation_key(channel.tenant_id, "telegram", user),
                received_at=at,
                event_type="message.status",
                external_message_id=f"{user}:1",
                status=("delivered", "read")[j % 2],
                status_at=at,
            )
        )
    assert len(events) == BATCH
    return events


@pytest.fixture(scope="module", params=["before first ANALYZE", "ANALYZEd"])
async def explained(
    request: pytest.FixtureRequest, services: ResolvedServices
) -> AsyncIterator[tuple[str, list[Explained]]]:
    url, large = await populate(services, cast(Statistics, request.param))
    conn = await connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            explaining = ExplainingConnection(conn)
            await apply_batch(cast(asyncpg.Connection, explaining), batch(large))
        finally:
            await transaction.rollback()
        yield f"PostgreSQL {version}, {request.param}", explaining.explained
    finally:
        await conn.close()


def test_the_batch_reaches_every_hot_statement(explained: tuple[str, list[Explained]]) -> None:
    _, plans = explained
    reached = {p.name for p in plans}
    assert reached - HOT == set(), "a new statement on the batch path: add it to HOT"
    assert HOT - reached == set(), "the batch no longer reaches these: make it"


def test_no_hot_statement_reads_more_than_a_bounded_amount_per_row(
    explained: tuple[str, list[Explained]],
) -> None:
    where, plans = explained
    for plan in plans:
        print(
            f"[plans] {where}: {plan.name} {plan.rows} rows {plan.ms:.1f} ms,"
            f" {plan.per_row(plan.buffers):.1f} buffers/row,"
            f" {plan.per_row(plan.entries):.1f} entries/row"
        )
    too_costly = [
        plan.describe()
        for plan in plans
        if plan.per_row(plan.buffers) > BUFFERS_PER_ROW
        or plan.per_row(plan.entries) > ENTRIES_PER_ROW
    ]
    assert not too_costly, f"{where}:\n" + "\n".join(too_costly)
