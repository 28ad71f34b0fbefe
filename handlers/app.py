"""FastStream wiring of the inbound consumer: thin subscriber, explicit ack policy.

`AckPolicy.NACK_ON_ERROR` with `batch=True`: offsets of a batch are committed only after the
handler returned, i.e. after the PostgreSQL commit; if it raises, FastStream seeks back and the
batch is redelivered. (The default, ACK_FIRST, commits before processing; AckPolicy.ACK commits a
failed batch too — both would lose events.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from handlers.ingestor import Backoff, Ingestor, Record
from ingest.config import Settings
from sql.db import create_pool

log = structlog.stdlib.get_logger("crm_ingest.consumer")


async def _raw_values(message: Any) -> Any:
    """Keep values as bytes: the ingestor validates each one and dead-letters bad ones."""
    return message.body


def dead_letter_headers(record: Record, exc: BaseException) -> dict[str, str]:
    return {
        "source-topic": record.topic,
        "source-partition": str(record.partition),
        "source-offset": str(record.offset),
        "error-class": type(exc).__name__,
        "error-message": str(exc)[:1000],
        **{
            k: v.decode("utf-8", "replace")
            for k, v in record.headers
            if k in ("event-id", "event-type", "correlation-id")
        },
    }


def build_broker(settings: Settings, pool: asyncpg.Pool, **broker_options: Any) -> KafkaBroker:
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id="crm-ingest-consumer",
        enable_idempotence=settings.producer_idempotence,
        # FastStream's per-message lines go through our structlog setup, at DEBUG: the
        # "batch committed" line below says what matters once per batch.
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,
        **broker_options,
    )
    dead_letters = broker.publisher(settings.dlq_topic, title="dead letters")

    async def dead_letter(record: Record, exc: BaseException) -> None:
        await dead_letters.publish(
            record.value or b"", key=record.key, headers=dead_letter_headers(record, exc)
        )

    ingestor = Ingestor(
        pool,
        dead_letter,
        Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s),
    )

    @broker.subscriber(
        *settings.inbound_topics,
        group_id=settings.consumer_group,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_raw_values,
        title="inbound events",
    )
    async def on_inbound(body: list[bytes], message: KafkaMessage) -> None:
        records = message.raw_message
        with structlog.contextvars.bound_contextvars(batch_size=len(body)):
            report = await ingestor.handle(records)
        log.info(
            "batch committed",
            records=report.records,
            created=report.outcome.messages_created,
            edited=report.outcome.messages_edited,
            already_present=report.outcome.already_present,
            dead_lettered=report.dead_lettered,
        )

    return broker


@dataclass(slots=True)
class RunningConsumer:
    broker: KafkaBroker
    pool: asyncpg.Pool


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings) -> AsyncIterator[RunningConsumer]:
    """Create the pool and the broker, consume until the block exits, then close both."""
    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    try:
        broker = build_broker(settings, pool)
        await broker.start()
        try:
            yield RunningConsumer(broker, pool)
        finally:
            await broker.stop()
    finally:
        await pool.close()
