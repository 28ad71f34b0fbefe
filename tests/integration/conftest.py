"""Pipeline fixtures on real services: a fresh database, private topics, a running consumer,
and the gateway app wired to the real publisher and channel directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from handlers.app import running_consumer
from ingest.config import Settings, Transport
from ingest.embedded import ResolvedServices
from sql.db import create_pool
from tests.integration.pipeline import Gateway, TenantChannel, gateway_for, isolated_pipeline
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
    async with gateway_for(settings, pool) as gateway:
        yield gateway


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
