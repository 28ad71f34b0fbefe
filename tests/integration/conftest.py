"""Pipeline fixtures on real services: a fresh database, private topics, a running consumer,
and the gateway app wired to the real publisher and channel directory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from handlers.app import running_consumer
from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.gateway import create_app
from ingest.topics import ensure_topics
from ingest.transports import load_adapters
from sql.db import create_pool

# Re-exported for modules that still import them from here; one definition, in pipeline.py.
from tests.integration.pipeline import (
    Gateway,
    RecordingPublisher,
    TenantChannel,
    migrated_database,
    new_channel,
    pipeline_settings,
)


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


@pytest.fixture
async def telegram(pool: asyncpg.Pool) -> TenantChannel:
    return await new_channel(pool, "telegram")
