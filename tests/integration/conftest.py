"""Pipeline fixtures on real services: a fresh database, private topics, a running consumer,
and the gateway app wired to the real publisher and channel directory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

import sql
from handlers.app import running_consumer
from ingest.admin import insert_channel
from ingest.channels import ChannelDirectory
from ingest.config import Settings, load_settings
from ingest.embedded import ResolvedServices
from ingest.events import MessageEvent, StatusEvent
from ingest.gateway import create_app
from ingest.publisher import EventPublisher
from ingest.topics import ensure_topics
from ingest.transports import load_adapters
from sql.db import connect, create_pool
from tests.support import create_database


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


async def migrated_database(server_url: str, prefix: str) -> str:
    url = await create_database(server_url, prefix)
    conn = await connect(url)
    try:
        await sql.migrate(conn)
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="session")
async def settings(services: ResolvedServices) -> Settings:
    url = await migrated_database(services.database_url, "pipeline")
    result = pipeline_settings(services, url)
    await ensure_topics(result)
    return result


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def consumer(settings: Settings) -> AsyncIterator[None]:
    async with running_consumer(settings):
        yield


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


@pytest.fixture(scope="session")
async def gateway(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Gateway]:
    publisher = RecordingPublisher(settings)
    await publisher.start()
    channels = ChannelDirectory(settings, pool)
    app = create_app(settings, publisher=publisher, channels=channels, adapters=load_adapters())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway.test") as client:
        yield Gateway(client, publisher)
    await publisher.stop()


@dataclass
class TenantChannel:
    tenant_id: uuid.UUID
    channel_id: uuid.UUID
    config: dict[str, Any]
    path: str


async def new_channel(
    pool: asyncpg.Pool, transport: str = "telegram", **config: str
) -> TenantChannel:
    tenant_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(sql.QUERIES["insert_tenant"], tenant_id, "test tenant")
        view = await insert_channel(conn, tenant_id, transport, config)  # type: ignore[arg-type]
    return TenantChannel(tenant_id, uuid.UUID(view["id"]), view["config"], view["webhook_path"])


@pytest.fixture
async def telegram(pool: asyncpg.Pool) -> TenantChannel:
    return await new_channel(pool, "telegram")
