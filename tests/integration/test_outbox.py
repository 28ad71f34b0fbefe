"""The outbox on a real PostgreSQL: one row per transaction in, one Kafka message per chat
event out, in order; nothing marked published unless the broker acknowledged it; `reemit`
queues exactly the chat events of the inbound events it is given."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from handlers.chat_events import OutboxRelay, chat_created, enqueue
from handlers.pipeline import publish_batched
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.events import SCHEMA_VERSION
from ingest.topics import ensure_topics
from sql import QUERIES
from sql.db import create_pool
from tests.integration.pipeline import (
    OUTBOX_EVENTS,
    migrated_database,
    pipeline_settings,
    read_topic,
)

pytestmark = pytest.mark.integration

TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")
AT = datetime(2026, 1, 2, 3, 4, 5)

Message = tuple[str, bytes, dict[str, str]]
PENDING_ROWS = "SELECT count(*) FROM ingest_outbox WHERE published_at IS NULL"


@pytest.fixture
async def outbox_pool(services: ResolvedServices) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own: these tests count and rewrite every outbox row."""
    pool = await create_pool(await migrated_database(services.database_url, "outbox"))
    yield pool
    await pool.close()


async def _queue(pool: asyncpg.Pool, chat_ids: Sequence[int]) -> list[uuid.UUID]:
    """One transaction's chat events (chat.created per chat id); returns their causes."""
    sources = [uuid.uuid4() for _ in chat_ids]
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(
            conn,
            [(chat_created(TENANT, c, c, AT), s) for c, s in zip(chat_ids, sources, strict=True)],
        )
    return sources


async def test_relay_publishes_each_event_in_order_and_marks_rows(
    outbox_pool: asyncpg.Pool,
) -> None:
    await _queue(outbox_pool, [1, 2])
    await _queue(outbox_pool, [3])
    assert await outbox_pool.fetchval("SELECT count(*) FROM ingest_outbox") == 2
    sent: list[Message] = []

    async def publish(messages: Sequence[Message]) -> None:
        sent.extend(messages)

    assert await OutboxRelay(outbox_pool, publish).flush() == 2
    assert [json.loads(value)["chat_id"] for _, value, _ in sent] == [1, 2, 3]
    key, value, headers = sent[0]
    payload = json.loads(value)
    assert key == f"{TENANT}:1"
    assert payload == chat_created(TENANT, 1, 1, AT)
    assert headers == {
        "event-type": "chat.created",
        "event-id": payload["event_id"],
        "schema-version": str(SCHEMA_VERSION),
        "content-type": "application/json",
    }
    assert await outbox_pool.fetchval(PENDING_ROWS) == 0
    assert await OutboxRelay(outbox_pool, publish).flush() == 0
    assert len(sent) == 3


async def test_a_failed_publish_leaves_the_rows_pending(outbox_pool: asyncpg.Pool) -> None:
    await _queue(outbox_pool, [1])

    async def broken(messages: Sequence[Message]) -> None:
        raise OSError("broker down")

    with pytest.raises(OSError, match="broker down"):
        await OutboxRelay(outbox_pool, broken).flush()
    assert await outbox_pool.fetchval(PENDING_ROWS) == 1


async def test_reemit_queues_exactly_the_chat_events_of_the_given_causes(
    outbox_pool: asyncpg.Pool,
) -> None:
    first = await _queue(outbox_pool, [1, 2])
    second = await _queue(outbox_pool, [3])
    pending = await _queue(outbox_pool, [4])  # not published yet: it leaves anyway, not re-queued

    async def publish(messages: Sequence[Message]) -> None:
        pass

    await OutboxRelay(outbox_pool, publish).flush()
    await outbox_pool.execute("UPDATE ingest_outbox SET published_at = NULL WHERE seq = 3")
    wanted = [first[1], second[0], pending[0], uuid.uuid4()]
    assert await outbox_pool.fetchval(QUERIES["reemit_chat_events"], wanted) == 2
    queued = [r for r in await outbox_pool.fetch(OUTBOX_EVENTS) if r["seq"] == 4]
    assert [r["event"]["chat_id"] for r in queued] == [2, 3]
    assert [r["source_event_id"] for r in queued] == [first[1], second[0]]
    assert await outbox_pool.fetchval(QUERIES["reemit_chat_events"], [uuid.uuid4()]) is None


async def test_batched_publish_partitions_like_send_and_keeps_order(
    services: ResolvedServices,
) -> None:
    settings: Settings = pipeline_settings(services, "postgresql://unused/db", partitions=4)
    await ensure_topics(settings)
    topic = settings.chat_events_topic
    # 40 chats, 12 events each, 3 KiB apiece: several full 256 KiB batches per partition.
    messages = [
        (f"{TENANT}:{chat}", f"{chat}:{n}:".encode() + b"x" * 3072, {"event-id": f"{chat}-{n}"})
        for n in range(12)
        for chat in range(40)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await publish_batched(
            producer, topic, messages, lambda h: [(k, v.encode()) for k, v in h.items()]
        )
        # Where send() puts each key: batched publishing must agree with it.
        probes = [
            await producer.send(topic, b"probe", key=f"{TENANT}:{c}".encode()) for c in range(40)
        ]
        sent = {f"{TENANT}:{c}": (await probe).partition for c, probe in enumerate(probes)}
    finally:
        await producer.stop()

    records = [
        r
        for r in await read_topic(settings.kafka_bootstrap_servers, topic, idle_s=1.0)
        if r.value != b"probe"
    ]
    assert len(records) == len(messages)
    assert {r.key.decode(): r.partition for r in records} == sent
    assert len(set(sent.values())) == 4
    for chat in range(40):
        mine = [r for r in records if r.key == f"{TENANT}:{chat}".encode()]
        assert [r.value.split(b":")[1] for r in mine] == [str(n).encode() for n in range(12)]
        assert [dict(r.headers)["event-id"] for r in mine] == [
            f"{chat}-{n}".encode() for n in range(12)
        ]
