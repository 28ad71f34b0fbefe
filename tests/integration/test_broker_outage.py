"""The gateway answers 200 only when the broker acknowledged; 503 + Retry-After otherwise, and
it recovers by itself when the broker is back. Runs on a private embedded broker so stopping it
does not disturb the other tests. (Tansu is memory-only: after the restart the topics are gone
and are created again, as an operator would with `crm-ingest topics`.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.embedded import EmbeddedKafka
from ingest.gateway import create_app
from ingest.publisher import EventPublisher
from ingest.topics import ensure_topics
from ingest.transports import load_adapters
from tests.integration.pipeline import TenantChannel
from tests.support import eventually

pytestmark = pytest.mark.integration

UPDATE = (
    Path(__file__).parent.parent / "payloads" / "telegram" / "text_official.json"
).read_bytes()


async def test_broker_down_means_503_then_recovery_without_restart(
    settings: Settings, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    broker = EmbeddedKafka()
    broker.start()
    try:
        private = settings.model_copy(
            update={
                "kafka_bootstrap_servers": broker.bootstrap_servers,
                "producer_idempotence": False,
                "publish_timeout_s": 2.0,
            }
        )
        await ensure_topics(private)
        publisher = EventPublisher(private)
        await publisher.start()
        app = create_app(
            private,
            publisher=publisher,
            channels=ChannelDirectory(private, pool),
            adapters=load_adapters(),
        )
        headers = {
            "content-type": "application/json",
            "x-telegram-bot-api-secret-token": telegram.config["secret_token"],
        }
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://gateway.test"
        ) as client:

            async def deliver() -> httpx.Response:
                return await client.post(telegram.path, content=UPDATE, headers=headers)

            assert (await deliver()).status_code == 200

            broker.stop()
            started = time.monotonic()
            down = await deliver()
            elapsed = time.monotonic() - started
            assert down.status_code == 503
            assert down.headers["retry-after"] == str(private.retry_after_s)
            assert json.loads(down.content) == {"error": "temporarily unavailable"}
            assert elapsed < 5.0, f"503 took {elapsed:.1f}s"
            assert (await client.get("/readyz")).status_code == 503

            broker.start()
            await ensure_topics(private)
            back = await eventually(
                deliver, lambda r: r.status_code == 200, within=30, interval=0.5
            )
            assert back.status_code == 200
        await publisher.stop()
    finally:
        broker.close()
