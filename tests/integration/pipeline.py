"""Helpers for pipeline tests on real services: isolated settings and databases, tenants with
channels, and a publisher that remembers what it published. (Fixtures live in conftest.py;
these are importable, so test modules and conftest share one copy of each class.)"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

import sql
from ingest.admin import insert_channel
from ingest.config import Settings, load_settings
from ingest.embedded import ResolvedServices
from ingest.events import MessageEvent, StatusEvent, encode_event, event_headers
from ingest.publisher import EventPublisher
from ingest.topics import ensure_topics
from tests.support import migrated_database


def pipeline_settings(services: ResolvedServices, database_url: str, **overrides: Any) -> Settings:
    """Settings for one isolated pipeline: own topics and consumer group on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "producer_idempotence": services.broker_supports_idempotence,
        "topic_prefix": f"it{tag}.",
        "consumer_group": f"crm-ingest-it-{tag}",
        "partitions": 4,
        "batch_timeout_ms": 50,
        "publish_timeout_s": 3.0,
        "retry_backoff_initial_s": 0.05,
        "retry_backoff_max_s": 1.0,
        "channel_cache_ttl_s": 0,
    }
    values.update(overrides)
    return load_settings(**values)


async def isolated_pipeline(
    services: ResolvedServices, prefix: str, server_url: str | None = None, **overrides: Any
) -> Settings:
    """The settings of a new pipeline: a fresh migrated database `prefix_...` (on `server_url`,
    by default the session's server), its own consumer group and topics, created."""
    url = await migrated_database(server_url or services.database_url, prefix)
    settings = pipeline_settings(services, url, **overrides)
    await ensure_topics(settings)
    return settings


class RecordingPublisher(EventPublisher):
    """The real publisher, remembering what it was asked to publish."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.published: list[MessageEvent | StatusEvent] = []

    async def publish(self, events: Any) -> None:
        await super().publish(events)
        self.published.extend(events)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    publisher: RecordingPublisher


@contextlib.asynccontextmanager
async def gateway_for(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Gateway]:
    """The gateway app of one pipeline, wired to the real publisher and channel directory,
    called in process over ASGI."""
    from ingest.channels import ChannelDirectory
    from ingest.gateway import create_app
    from ingest.transports import load_adapters

    publisher = RecordingPublisher(settings)
    await publisher.start()
    channels = ChannelDirectory(settings, pool)
    app = create_app(settings, publisher=publisher, channels=channels, adapters=load_adapters())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="https://gateway.test"
        ) as client:
            yield Gateway(client, publisher)
    finally:
        await publisher.stop()


@dataclass
class TenantChannel:
    tenant_id: uuid.UUID
    channel_id: uuid.UUID
    config: dict[str, Any]
    path: str


async def new_channel(
    pool: asyncpg.Pool,
    transport: str = "telegram",
    *,
    tenant_id: uuid.UUID | None = None,
    **config: str,
) -> TenantChannel:
    """A channel of a new tenant, or of `tenant_id` when given (an existing tenant)."""
    async with pool.acquire() as conn:
        if tenant_id is None:
            tenant_id = uuid.uuid4()
            await conn.execute(sql.QUERIES["insert_tenant"], tenant_id, "test tenant")
        view = await insert_channel(conn, tenant_id, transport, config)  # type: ignore[arg-type]
    return TenantChannel(tenant_id, uuid.UUID(view["id"]), view["config"], view["webhook_path"])


# Every queued chat event with its outbox row and position, oldest first: read independently of
# sql/queries/outbox.sql (reemit_chat_events unpacks the rows the same way).
OUTBOX_EVENTS = """
SELECT o.seq, e.ord, e.event::jsonb AS event, e.source AS source_event_id, o.published_at
FROM ingest_outbox AS o
CROSS JOIN LATERAL ROWS FROM (json_array_elements(o.events), unnest(o.source_event_ids))
     WITH ORDINALITY AS e(event, source, ord)
ORDER BY o.seq, e.ord"""


async def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[Any]:
    """Everything on a topic, read until idle (the embedded broker's end offsets are wrong)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records += part
                last = time.monotonic()
    finally:
        await consumer.stop()
    return records


def event_record(event: MessageEvent | StatusEvent) -> dict[str, Any]:
    """An inbound event as the publisher writes it: a producer's `send` arguments after the topic
    (keyed by conversation, so a conversation's events share a partition)."""
    return {
        "value": encode_event(event),
        "key": event.conversation_key.encode(),
        "headers": event_headers(event),
    }
