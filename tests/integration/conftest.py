"""Pipeline fixtures on real services: a fresh database, private topics, a running consumer,
and the gateway app wired to the real publisher and channel directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from handlers.app import running_consumer
from ingest.channels import ChannelDirectory
from ingest.config import Settings, Transport
from ingest.embedded import ResolvedServices
from ingest.gateway import create_app
from ingest.objectstore import open_store
from ingest.transports import load_adapters
from sql.db import create_pool
from tests.integration.pipeline import Gateway, RecordingPublisher, TenantChannel, isolated_pipeline
from tests.integration.signing import signed_channel


@pytest.fixture(scope="session")
async def settings(services: ResolvedServices) -> Settings:
    return await isolated_pipeline(services, "pipeline")


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
    store = open_store(settings.media_store)
    app = create_app(
        settings,
        publisher=publisher,
        channels=channels,
        adapters=load_adapters(),
        media_store=store,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://gateway.test") as client:
        yield Gateway(client, publisher)
    await publisher.stop()


def signed_channel_fixture(transport: Transport) -> Any:
    """A fixture named after `transport`: a new tenant with one channel of it, accepting the
    signatures of tests/integration/signing.py."""

    @pytest.fixture(name=transport)
    async def channel(pool: asyncpg.Pool) -> TenantChannel:
        return await signed_channel(pool, transport)

    return channel


telegram = signed_channel_fixture("telegram")
whatsapp = signed_channel_fixture("whatsapp")
sms = signed_channel_fixture("sms")
email = signed_channel_fixture("email")
