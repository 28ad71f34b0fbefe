"""Helpers of the media tests: settings that point the fetch worker at the provider fakes and a
real store, and reading back what the worker did (jobs, uploads, stored bytes, chat events)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from handlers.app import running_consumer
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.objectstore import open_store
from sql.db import create_pool
from tests.fakes.fixtures import fake_provider_settings
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake
from tests.integration.pipeline import OUTBOX_EVENTS, Gateway, isolated_pipeline, open_gateway
from tests.support import eventually

BOT_TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
ACCESS_TOKEN = "EAAGm0PX4ZCpsBAfakeWhatsAppAccessToken0123456789"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
# The largest size of tests/payloads/telegram/photo.json.
PHOTO_ID = "AgACAgIAAxkBAAMEZCiCg7A1qAABECDXqbjnqtId777bAAIFyDEbLKhISVFwzRK8kZMNAQADAgADeQADLwQ"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def media_overrides(
    telegram: TelegramFake, whatsapp: WhatsAppFake, twilio: TwilioFake, store_url: str
) -> dict[str, Any]:
    """Settings (field names) for a pipeline whose worker fetches from the fakes into
    `store_url`, retrying quickly."""
    return {
        **fake_provider_settings(telegram, whatsapp, twilio),
        "media_store": store_url,
        "media_poll_interval_s": 0.1,
        "media_retry_backoff_s": 0.1,
        "media_retry_backoff_max_s": 1.0,
        "outbox_interval_s": 0.2,
    }


@dataclass
class MediaPipeline:
    settings: Settings
    pool: asyncpg.Pool
    gateway: Gateway


@contextlib.asynccontextmanager
async def media_pipeline(
    services: ResolvedServices, prefix: str, server_url: str | None = None, **overrides: Any
) -> AsyncIterator[MediaPipeline]:
    """A pipeline of its own (database on `server_url` or the session's server, topics,
    consumer with its fetch worker when `media_store` is given) and the gateway in front."""
    settings = await isolated_pipeline(services, prefix, server_url, **overrides)
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        async with running_consumer(settings), open_gateway(settings, pool) as gateway:
            yield MediaPipeline(settings, pool, gateway)
    finally:
        await pool.close()


def payload(size: int, seed: str, head: bytes = b"") -> bytes:
    """`size` deterministic bytes starting with `head` (a file signature, for sniffing)."""
    body = hashlib.shake_256(seed.encode()).digest(max(size - len(head), 0))
    return head + body


JOB_ROWS = """
SELECT j.upload_id, j.message_id, j.channel_id, j.status, j.attempts, j.last_error, j.lease,
       u.path, u.size, u.hash, u.mimetype, u.tenant_id
FROM ingest_media_jobs AS j JOIN core_uploads AS u ON u.id = j.upload_id
WHERE j.tenant_id = $1
ORDER BY j.upload_id"""


async def media_jobs(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await pool.fetch(JOB_ROWS, tenant_id))


async def wait_jobs(pool: asyncpg.Pool, tenant_id: uuid.UUID, count: int) -> list[asyncpg.Record]:
    """The tenant's jobs once at least `count` exist."""

    async def probe() -> list[asyncpg.Record]:
        return await media_jobs(pool, tenant_id)

    return await eventually(probe, lambda found: len(found) >= count)


async def settled_jobs(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, count: int, within: float = 60.0
) -> list[asyncpg.Record]:
    """The tenant's jobs once `count` of them exist and none is pending."""

    async def probe() -> list[asyncpg.Record]:
        return await media_jobs(pool, tenant_id)

    return await eventually(
        probe,
        lambda jobs: len(jobs) >= count and all(j["status"] != "pending" for j in jobs),
        within=within,
    )


async def stored_bytes(store_url: str, path: str) -> bytes:
    store = open_store(store_url)
    try:
        return b"".join([chunk async for chunk in store.get(path)])
    finally:
        await store.close()


async def attachment_events(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's queued `message.updated` chat events about attachments, oldest first."""
    events = [
        json.loads(r["event"]) if isinstance(r["event"], str) else r["event"]
        for r in await pool.fetch(OUTBOX_EVENTS)
    ]
    return [
        e for e in events if e["tenant_id"] == str(tenant_id) and e.get("change") == "attachment"
    ]
