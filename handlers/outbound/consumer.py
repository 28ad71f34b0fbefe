"""FastStream wiring of the reply dispatcher: its resources, its subscriber, its own process.

One record at a time, in partition order (a chat's commands share a key, hence a partition, so
its replies go out in order). `AckPolicy.NACK_ON_ERROR`: the offset is committed only after
`Dispatcher.handle` returned, i.e. after the outcome was committed; if it raises (PostgreSQL
unavailable before anything was sent), FastStream seeks back and the record comes again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import structlog
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from handlers.chat_events import OutboxRelay
from handlers.dead_letters import DeadLetterSink, PublishDeadLetter
from handlers.ingestor import TRANSIENT_ERRORS, Backoff, BatchReport, DeadLetter, Record
from handlers.outbound.dispatcher import Dispatcher, Limits
from handlers.pipeline import producer_publishers
from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.objectstore import ObjectStore, StoredObject, StoreUnavailable, open_store
from ingest.transports.http_download import media_http_client
from ingest.transports.sending import load_senders
from sql.db import create_pool

log = structlog.stdlib.get_logger("crm_ingest.outbound")

# Longer than aiokafka's 300 s default: a command may hold its partition through every retry of
# a transient failure (CRM_INGEST_OUTBOUND_MAX_ATTEMPTS calls, each up to the HTTP timeout,
# and the waits between them) without the group taking the partition away mid-send.
MAX_POLL_INTERVAL_MS = 900_000


class UnconfiguredStore:
    """Stands in for the object store when CRM_INGEST_MEDIA_STORE is not set: no upload can be
    stored there, so a reply with attachments is refused before any provider call."""

    def url(self, key: str) -> str:
        raise StoreUnavailable("CRM_INGEST_MEDIA_STORE is not set")

    async def put(self, key: str, chunks: Any, *, content_type: str | None, max_bytes: int) -> Any:
        raise StoreUnavailable("CRM_INGEST_MEDIA_STORE is not set")

    async def put_bytes(self, key: str, data: bytes, content_type: str | None) -> StoredObject:
        raise StoreUnavailable("CRM_INGEST_MEDIA_STORE is not set")

    async def get(self, key_or_url: str) -> AsyncIterator[bytes]:
        nothing: tuple[bytes, ...] = ()
        for chunk in nothing:  # never runs: it makes this an async generator, as `get` is
            yield chunk
        raise StoreUnavailable("CRM_INGEST_MEDIA_STORE is not set")

    async def ping(self) -> bool:
        return False

    async def sweep(self, older_than_s: float) -> int:
        return 0  # nothing was ever put

    async def close(self) -> None:
        return None


@contextlib.asynccontextmanager
async def open_dispatcher(
    settings: Settings,
    pool: asyncpg.Pool,
    publish_dead_letter: PublishDeadLetter,
    wake: Callable[[], None],
    dead_letter: DeadLetter | None = None,
) -> AsyncIterator[Dispatcher]:
    """The dispatcher with its HTTP client, object store and channel directory, closed after.
    Dead letters go to `ingest_dead_letters` and the topic, or to `dead_letter` when given."""
    store: ObjectStore = (
        open_store(settings.media_store) if settings.media_store else UnconfiguredStore()
    )
    # Uploads count as stored when their path lies in the configured store.
    store_prefix = store.url("k").removesuffix("k") if settings.media_store else None
    # Keeps no cookies: nothing one tenant's call sets rides along on another's. The senders
    # set their timeouts per request (CRM_INGEST_OUTBOUND_TIMEOUT_S).
    client = media_http_client()
    try:
        yield Dispatcher(
            pool,
            ChannelDirectory(settings, pool),
            load_senders(settings, client, store),
            dead_letter or DeadLetterSink(pool, publish_dead_letter),
            store_prefix=store_prefix,
            limits=Limits(
                settings.outbound_max_attempts,
                settings.outbound_backoff_initial_s,
                settings.outbound_backoff_max_s,
            ),
            backoff=Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s),
            wake=wake,
        )
    finally:
        await client.aclose()
        await store.close()


async def _raw_value(message: Any) -> Any:
    """Keep the value as bytes: the dispatcher validates it and dead-letters what is not a
    command."""
    return message.body


def subscribe_dispatcher(broker: KafkaBroker, settings: Settings, dispatcher: Dispatcher) -> None:
    backoff = Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
    failures = 0

    @broker.subscriber(
        settings.outbound_commands_topic,
        group_id=settings.outbound_consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        decoder=_raw_value,
        title="outbound commands",
    )
    async def on_command(body: bytes, message: KafkaMessage) -> None:
        nonlocal failures
        try:
            record = message.raw_message
            assert not isinstance(record, tuple)  # a single record: not a batch subscriber
            outcome = await dispatcher.handle(record)
        except TRANSIENT_ERRORS as exc:
            # Nothing was sent; the record comes again after the nack. Wait first, so a
            # database outage is not a busy loop.
            log.warning("database unavailable, command redelivered", error=repr(exc))
            await backoff.wait(failures)
            failures += 1
            raise
        failures = 0
        log.info("command done", outcome=outcome)


@contextlib.asynccontextmanager
async def running_dispatcher(settings: Settings) -> AsyncIterator[KafkaBroker]:
    """`crm-ingest outbound work`: the dispatcher alone, with its own outbox relay."""
    from handlers.app import consumer_broker, consuming  # handlers.app runs it too

    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    try:
        async with producer_publishers(settings, client_id="crm-ingest-outbound-out") as (
            dead_letter,
            chat_events,
        ):
            relay = OutboxRelay(pool, chat_events, retention_hours=settings.outbox_retention_hours)
            async with open_dispatcher(settings, pool, dead_letter, relay.wake) as dispatcher:
                broker = consumer_broker(settings, "crm-ingest-outbound")
                subscribe_dispatcher(broker, settings, dispatcher)
                async with consuming(broker, relay, settings):
                    yield broker
    finally:
        await pool.close()


async def dispatch_records(dispatcher: Dispatcher, records: Sequence[Record]) -> BatchReport:
    """Commands read by `crm-ingest replay` or `dlq replay`, executed one by one in order, as
    the live subscriber would: a command already done does nothing (`already_present`)."""
    report = BatchReport(records=len(records))
    for record in records:
        outcome = await dispatcher.handle(record)
        if outcome == "dead_lettered":
            report.dead_lettered += 1
        elif outcome == "already_done":
            report.outcome.already_present += 1
        else:
            report.outcome.messages_created += 1
    return report
