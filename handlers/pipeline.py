"""The inbound pipeline, built one way for the live consumer, topic replay and DLQ replay:
an Ingestor writing batches (dead letters to table + topic) and an OutboxRelay publishing chat
events, both publishing through one plain aiokafka producer (`producer_publishers`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer

from handlers.chat_events import OutboxRelay, Publish
from handlers.dead_letters import DeadLetterSink, PublishDeadLetter
from handlers.ingestor import Backoff, Ingestor
from ingest.config import Settings


@dataclass(slots=True)
class Pipeline:
    ingestor: Ingestor
    relay: OutboxRelay


def build_pipeline(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    publish_dead_letter: PublishDeadLetter,
    publish_chat_events: Publish,
    dead_letter: Callable[..., Awaitable[None]] | None = None,
) -> Pipeline:
    relay = OutboxRelay(pool, publish_chat_events, retention_hours=settings.outbox_retention_hours)
    ingestor = Ingestor(
        pool,
        dead_letter or DeadLetterSink(pool, publish_dead_letter),
        Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s),
    )
    return Pipeline(ingestor, relay)


@contextlib.asynccontextmanager
async def producer_publishers(
    settings: Settings, client_id: str = "crm-ingest-ops"
) -> AsyncIterator[tuple[PublishDeadLetter, Publish]]:
    """Publish functions for dead letters and chat events over one plain aiokafka producer."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        linger_ms=settings.producer_linger_ms,
    )
    await producer.start()

    def encode(headers: dict[str, str]) -> list[tuple[str, bytes]]:
        return [(name, value.encode()) for name, value in headers.items()]

    async def dead_letter(value: bytes, key: bytes | None, headers: dict[str, str]) -> None:
        await producer.send_and_wait(settings.dlq_topic, value, key=key, headers=encode(headers))

    async def chat_events(messages: Sequence[tuple[str, bytes, dict[str, str]]]) -> None:
        sent = [
            await producer.send(
                settings.chat_events_topic, value, key=key.encode(), headers=encode(headers)
            )
            for key, value, headers in messages
        ]
        await asyncio.gather(*sent)

    try:
        yield dead_letter, chat_events
    finally:
        await producer.stop()
