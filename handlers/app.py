"""FastStream wiring of the inbound consumer: thin subscriber, explicit ack policy.

`AckPolicy.NACK_ON_ERROR` with `batch=True`: offsets of a batch are committed only after the
handler returned, i.e. after the PostgreSQL commit; if it raises, FastStream seeks back and the
batch is redelivered. (The default, ACK_FIRST, commits before processing; AckPolicy.ACK commits a
failed batch too — both would lose events.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.subscriber.usecase import BatchSubscriber
from prometheus_client import REGISTRY

from handlers.chat_events import OutboxRelay, Publish
from handlers.dead_letters import PublishDeadLetter
from handlers.ingestor import correlation_ids
from handlers.kept_webhooks import record_kept_webhooks
from handlers.media.runtime import running_media_worker
from handlers.outbound.consumer import open_dispatcher, subscribe_dispatcher
from handlers.pipeline import build_pipeline, producer_publishers
from ingest import metrics
from ingest.config import Settings
from ingest.logs import routed_logger
from ingest.process import settle_heap
from sql.db import create_pool

log = structlog.stdlib.get_logger("crm_ingest.consumer")


async def _raw_values(message: Any) -> Any:
    """Keep values as bytes: the ingestor validates each one and dead-letters bad ones."""
    return message.body


class ConsumerBroker(KafkaBroker):
    """FastStream's KafkaBroker, its subscribers started together. `KafkaBroker.start` starts
    them one after another, and each waits for its consumer group's join (about 5 s on the
    embedded broker): with three groups (inbound, kept webhooks, replies) a consumer took 16 s
    to its first row. Started together, the joins overlap."""

    async def start(self) -> None:
        await self.connect()
        await asyncio.gather(*(subscriber.start() for subscriber in self.subscribers))
        for publisher in self.publishers:
            await publisher.start()
        self.running = True


def consumer_broker(settings: Settings, client_id: str, **broker_options: Any) -> KafkaBroker:
    """A broker for consumers: logging routed, graceful stop, FastStream's metrics."""
    return ConsumerBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        enable_idempotence=settings.producer_idempotence,
        # FastStream's per-message lines go through our structlog setup, at DEBUG: the
        # "batch committed" line below says what matters once per batch. Its import gave this
        # logger a coloured handler of its own; routed_logger takes it back.
        logger=routed_logger("faststream"),
        # On stop, the batch in hand finishes (and commits) within this; past it, it is
        # abandoned uncommitted and redelivered to whoever takes the partition next.
        graceful_timeout=settings.shutdown_timeout_s,
        # FastStream's own series (received/processed messages, handler time), beside ours,
        # which count what a batch did to the database.
        middlewares=[KafkaPrometheusMiddleware(registry=REGISTRY, app_name="crm-ingest")],
        log_level=logging.DEBUG,
        **broker_options,
    )


class Wakeup:
    """A call that wakes what is attached to it: the media worker starts after the broker."""

    def __init__(self) -> None:
        self._targets: list[Callable[[], None]] = []

    def attach(self, target: Callable[[], None]) -> None:
        self._targets.append(target)

    def __call__(self) -> None:
        for target in self._targets:
            target()


def build_broker(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    publish_dead_letter: PublishDeadLetter,
    publish_chat_events: Publish,
    media_jobs_queued: Callable[[], None] = lambda: None,
    **broker_options: Any,
) -> tuple[KafkaBroker, OutboxRelay]:
    """The consumer's broker. Dead letters and chat events leave through a plain aiokafka
    producer (publishing each through FastStream cost ~90 µs; ingest/asyncapi.py documents
    those topics)."""
    broker = consumer_broker(settings, "crm-ingest-consumer", **broker_options)
    pipeline = build_pipeline(
        settings,
        pool,
        publish_dead_letter=publish_dead_letter,
        publish_chat_events=publish_chat_events,
    )
    ingestor, relay = pipeline.ingestor, pipeline.relay

    def batches(*topics: str, group_id: str, title: str) -> BatchSubscriber:
        """Both subscribers: batches, offsets committed only after the database commit."""
        return broker.subscriber(
            *topics,
            group_id=group_id,
            title=title,
            batch=True,
            max_records=settings.batch_max_records,
            batch_timeout_ms=settings.batch_timeout_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_raw_values,
        )

    @batches(*settings.inbound_topics, group_id=settings.consumer_group, title="inbound events")
    async def on_inbound(body: list[bytes], message: KafkaMessage) -> None:
        records = message.raw_message
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(batch_size=len(body)):
            report = await ingestor.handle(records)
        metrics.observe_batch(
            len(records),
            time.perf_counter() - started,
            created=report.outcome.messages_created,
            edited=report.outcome.messages_edited,
            already_present=report.outcome.already_present,
            dead_lettered=report.dead_lettered,
            invalid=report.invalid,
        )
        metrics.observe_lag(message.consumer, records)
        log.info(
            "batch committed",
            records=report.records,
            created=report.outcome.messages_created,
            edited=report.outcome.messages_edited,
            already_present=report.outcome.already_present,
            dead_lettered=report.dead_lettered,
            correlation_ids=correlation_ids(records),
        )
        relay.wake()  # chat events of this batch go out beside the next batch
        if report.outcome.media_jobs:
            media_jobs_queued()  # claimed now, not at the worker's next poll

    # A group of its own: the dead-letter topic is read for kept webhooks only, and its
    # offsets must not mix with the inbound topics' (replaying one never moves the other).
    @batches(
        settings.dlq_topic,
        group_id=f"{settings.consumer_group}.kept-webhooks",
        title="kept webhooks",
    )
    async def on_kept(body: list[bytes], message: KafkaMessage) -> None:
        kept = await record_kept_webhooks(pool, message.raw_message)
        if kept:
            log.info("kept webhooks recorded", kept=kept, records=len(body))

    return broker, relay


@dataclass(slots=True)
class RunningConsumer:
    broker: KafkaBroker
    pool: asyncpg.Pool
    relay: OutboxRelay


@contextlib.asynccontextmanager
async def consuming(
    broker: KafkaBroker, relay: OutboxRelay, settings: Settings
) -> AsyncIterator[None]:
    """The broker's subscribers consuming and the relay sweeping, until the block exits."""
    await broker.start()
    stop = asyncio.Event()
    sweep = asyncio.create_task(relay.run(settings.outbox_interval_s, stop))
    try:
        yield
    finally:
        await broker.stop()
        stop.set()
        await sweep


@contextlib.asynccontextmanager
async def running_consumer(settings: Settings) -> AsyncIterator[RunningConsumer]:
    """Create the pool and the broker, consume until the block exits, then close both."""
    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    try:
        publishers = producer_publishers(settings, client_id="crm-ingest-consumer-out")
        async with publishers as (dead_letter, chat_events):
            media_jobs_queued = Wakeup()
            broker, relay = build_broker(
                settings,
                pool,
                publish_dead_letter=dead_letter,
                publish_chat_events=chat_events,
                media_jobs_queued=media_jobs_queued,
            )
            # The reply dispatcher rides along (its own group; `crm-ingest outbound work` runs
            # it alone).
            async with open_dispatcher(settings, pool, dead_letter, relay.wake) as dispatcher:
                subscribe_dispatcher(broker, settings, dispatcher)
                settle_heap()  # before the first batch: its full collection takes ~1 s (bench)
                async with consuming(broker, relay, settings):
                    # The media fetcher beside the consumer; it stops (finishing or handing
                    # back its downloads) before the relay, so its last chat events go out.
                    if settings.media_worker_in_consume:
                        async with running_media_worker(
                            settings, pool, on_queued=relay.wake
                        ) as worker:
                            if worker is not None:
                                media_jobs_queued.attach(worker.wake)
                            yield RunningConsumer(broker, pool, relay)
                    else:
                        log.info("media fetching left to `crm-ingest media work` processes")
                        yield RunningConsumer(broker, pool, relay)
    finally:
        await pool.close()
