"""Chat events out, dead letters, topic replay and DLQ replay on the real broker and database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from handlers.app import running_consumer
from handlers.replay import Range, list_dead_letters, replay_dead_letters, replay_topic
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.publisher import EventPublisher
from ingest.transports.base import Event
from tests.integration.pipeline import (
    OUTBOX_EVENTS,
    TenantChannel,
    event_record,
    new_channel,
    pipeline_and_pool,
    read_topic,
)
from tests.integration.rows import table_hashes
from tests.integration.signing import PAYLOADS, adapter_events, telegram_headers
from tests.support import eventually

pytestmark = pytest.mark.integration


def telegram_events(channel: TenantChannel, *names: str) -> list[Event]:
    headers = telegram_headers(channel)
    return [
        event
        for name in names
        for event in adapter_events(
            channel, "telegram", headers, (PAYLOADS / "telegram" / name).read_bytes()
        )
    ]


@pytest.fixture
async def ops(services: ResolvedServices) -> AsyncIterator[tuple[Settings, asyncpg.Pool]]:
    # No media worker: the scenario's chat events are ingestion's own (a photo's fetch outcome
    # is an event of tests/integration/test_media_pipeline.py).
    async with pipeline_and_pool(
        services, "ops", outbox_interval_s=0.2, media_worker_in_consume=False
    ) as pipeline:
        yield pipeline


async def test_chat_events_scenario_replay_and_dead_letters(
    ops: tuple[Settings, asyncpg.Pool],
) -> None:
    settings, pool = ops
    channel = await new_channel(pool, "telegram")
    first, edit, other = telegram_events(
        channel, "text_official.json", "edited_message.json", "photo.json"
    )
    orphan = first.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "channel_id": uuid.uuid4(),  # a channel that does not exist (yet)
            "external_message_id": "1111111:99",
        }
    )

    # Another tenant's id on our channel: a forged or corrupted record.
    forged = first.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "tenant_id": uuid.uuid4(),
            "external_message_id": "1111111:97",
        }
    )
    # A constraint of the host application that retrying cannot satisfy: the batch is split
    # until this event stands alone, and only it is dead-lettered.
    poison = first.model_copy(
        update={"event_id": uuid.uuid4(), "external_message_id": "1111111:98", "text": "poison"}
    )
    await pool.execute(
        "ALTER TABLE crm_chat_messages ADD CONSTRAINT host_rule CHECK (message <> 'poison')"
    )

    publisher = EventPublisher(settings)
    await publisher.start()
    await publisher.publish([first, first, other])  # a duplicate delivery too
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    topic = settings.inbound_topic("telegram")
    # Poison in the middle of a batch of healthy events, all on one partition (same key).
    await producer.send_and_wait(topic, b"{not json", key=first.conversation_key.encode())
    for bad in (orphan, forged, poison):  # copies of `first`: its conversation key too
        await producer.send_and_wait(topic, **event_record(bad))
    await producer.stop()
    await publisher.publish([edit])
    await publisher.stop()

    async with running_consumer(settings):
        stored = await eventually(
            lambda: pool.fetch("SELECT message FROM crm_chat_messages ORDER BY id"),
            lambda rows: len(rows) == 2 and rows[0]["message"] == "Edited text",
            within=60,
        )
        assert [r["message"] for r in stored] == ["Edited text", "[photo]"]
        letters = await eventually(
            lambda: list_dead_letters(settings), lambda rows: len(rows) == 4, within=30
        )
        await asyncio.sleep(0.5)  # the relay sweep runs every 0.2 s

    # Dead letters: every reason recorded, healthy events of the same batch stored.
    assert sorted(r["error_class"] for r in letters) == [
        "CheckViolationError",
        "ForeignChannel",
        "ForeignChannel",
        "ValidationError",
    ]
    reasons = sorted(r["error_message"] for r in letters if r["error_class"] == "ForeignChannel")
    assert reasons == sorted(
        [
            f"channel {channel.channel_id} belongs to another tenant",
            f"channel {orphan.channel_id} unknown channel",
        ]
    )
    dlq = await read_topic(settings.kafka_bootstrap_servers, settings.dlq_topic)
    assert len(dlq) == 4
    headers = dict((k, v.decode()) for k, v in dlq[0].headers)
    assert headers["source-topic"] == topic
    assert "error-class" in headers
    assert "source-offset" in headers

    # Chat events: exactly the scenario's creations and updates, keyed by chat.
    events = [
        json.loads(r.value)
        for r in await read_topic(settings.kafka_bootstrap_servers, settings.chat_events_topic)
    ]
    types = sorted(e["event_type"] for e in events)
    assert types == sorted(
        ["client.created", "chat.created", "message.created", "message.updated"] * 1
        + ["client.created", "chat.created", "message.created"]
    )
    assert len({e["event_id"] for e in events}) == len(events)
    edited = next(e for e in events if e["event_type"] == "message.updated")
    assert (edited["change"], edited["text"]) == ("edited", "Edited text")
    chat_ids = {e["chat_id"] for e in events}
    assert len(chat_ids) == 2

    # Replay of the whole history changes no row and queues no new chat event.
    before = await table_hashes(pool)
    outbox_before = await pool.fetch(OUTBOX_EVENTS)
    summary = await replay_topic(settings, topic, Range(from_offset=0), idle_timeout_s=2.0)
    assert summary.read == 8
    assert (summary.applied, summary.dead_lettered) == (0, 4)
    assert await table_hashes(pool) == before
    assert await pool.fetch(OUTBOX_EVENTS) == outbox_before

    # --reemit publishes the range's chat events again, with the same ids.
    await replay_topic(settings, topic, Range(from_offset=0), reemit=True, idle_timeout_s=2.0)
    again = [
        json.loads(r.value)
        for r in await read_topic(settings.kafka_bootstrap_servers, settings.chat_events_topic)
    ]
    assert len(again) > len(events)
    assert {e["event_id"] for e in again} == {e["event_id"] for e in events}

    # Fix the cause (create the missing channel), then DLQ replay stores the event once.
    await pool.execute(
        "INSERT INTO ingest_channels (id, tenant_id, transport) VALUES ($1, $2, 'telegram')",
        orphan.channel_id,
        channel.tenant_id,
    )
    result = await replay_dead_letters(settings, None)
    assert (result["replayed"], result["still_failing"], result["created"]) == (1, 3, 1)
    repeat = await replay_dead_letters(settings, None)
    assert (repeat["selected"], repeat["replayed"], repeat["created"]) == (3, 0, 0)
    texts = [r["message"] for r in await pool.fetch("SELECT message FROM crm_chat_messages")]
    assert sorted(texts) == ["/start", "Edited text", "[photo]"]
