"""The gateway's one Kafka producer: publish a request's events, acknowledged or not at all.

A webhook answers 200 only once the broker has acknowledged every event of the request
(`acks="all"`), so `publish` waits for every delivery future, bounded by `publish_timeout_s`.
Anything that keeps that from happening - broker down, timeout, producer not connected yet - is
raised as `PublishUnavailable` (the gateway answers 503 and the provider retries); an event over
the broker's size limit, which no retry fixes, as `EventTooLarge` (413). A retried
request may re-send events that were acknowledged the first time; their deterministic
`event_id` lets the consumers drop the duplicates.

The broker does not have to be up when the gateway boots: a failed first connection is retried
in the background with capped exponential backoff, and publishing answers 503 until it succeeds.
Once connected, aiokafka reconnects by itself when the broker goes away and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from ingest.config import Settings
from ingest.errors import EventTooLarge, PublishUnavailable
from ingest.events import (
    RawWebhook,
    encode_event,
    encode_raw_webhook,
    event_headers,
    raw_webhook_headers,
)
from ingest.logs import get_logger
from ingest.partitioning import CachedKeyPartitioner
from ingest.transports.base import Event

log = get_logger(__name__)

CLIENT_ID = "crm-ingest-gateway"
# A readiness probe must answer fast, whatever the publish timeout is.
PING_TIMEOUT_S = 2.0
# Bounds the flush on shutdown: with the broker gone, pending batches would otherwise wait for
# their own request timeout.
STOP_TIMEOUT_S = 10.0

ProducerFactory = Callable[[], Any]


class EventPublisher:
    """Wraps one `AIOKafkaProducer`; create it anywhere, `start()` it inside the event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: ProducerFactory | None = None,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._timeout = settings.publish_timeout_s
        self._factory = producer_factory or self._default_factory
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._producer: Any | None = None  # set only once started
        self._connector: asyncio.Task[None] | None = None
        self._stopped = False

    def _default_factory(self) -> AIOKafkaProducer:
        s = self._settings
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=CLIENT_ID,
            acks="all",
            enable_idempotence=s.producer_idempotence,
            linger_ms=s.producer_linger_ms,
            compression_type=None if s.producer_compression == "none" else s.producer_compression,
            # Also the accumulator's batch expiry: a batch never outlives a publish by much.
            request_timeout_ms=max(1000, int(s.publish_timeout_s * 1000)),
            partitioner=CachedKeyPartitioner(),
        )

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect once; when the broker is unreachable, keep trying in the background.

        Never raises for an unreachable broker, so the gateway boots and answers 503. A bad
        configuration (e.g. a compression codec whose library is missing) does raise: retrying
        would not fix it.
        """
        if self._producer is not None or self._connector is not None:
            return
        self._stopped = False
        if not await self._attempt():
            self._connector = asyncio.create_task(self._reconnect(), name="kafka-producer-connect")

    async def _attempt(self) -> bool:
        producer = self._factory()  # outside the try: configuration errors must surface
        try:
            async with asyncio.timeout(self._timeout):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("kafka producer not connected", error=repr(exc))
            await _quiet_stop(producer)
            return False
        except BaseException:  # cancelled by stop(): do not leak the half-open client
            await _quiet_stop(producer)
            raise
        if self._stopped:  # stop() ran while we were connecting
            await _quiet_stop(producer)
            return False
        self._producer = producer
        log.info("kafka producer connected")
        return True

    async def _reconnect(self) -> None:
        delay = self._reconnect_initial_s
        while not self._stopped:
            await asyncio.sleep(delay)
            try:
                if await self._attempt():
                    return
            except Exception:
                # Not expected after a first successful construction; keep the gateway alive.
                log.exception("kafka producer connect attempt failed")
            delay = min(delay * 2, self._reconnect_max_s)

    async def stop(self) -> None:
        """Flush what is pending (bounded) and close; safe to call twice or before start."""
        self._stopped = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quiet_stop(producer)

    def _destination(self, record: Event | RawWebhook) -> tuple[str, bytes, bytes, Any]:
        """(topic, key, value, headers): events go to their transport's topic, kept webhooks
        to the dead-letter topic."""
        if isinstance(record, RawWebhook):
            return (
                self._settings.dlq_topic,
                record.kafka_key.encode(),
                encode_raw_webhook(record),
                raw_webhook_headers(record),
            )
        return (
            self._settings.inbound_topic(record.transport),
            record.conversation_key.encode(),
            encode_event(record),
            event_headers(record),
        )

    async def publish(self, events: Sequence[Event | RawWebhook]) -> None:
        """Send every record and wait for all acknowledgements, or raise PublishUnavailable."""
        if not events:
            return
        producer = self._producer
        if producer is None:
            raise PublishUnavailable("kafka producer is not connected")
        try:
            async with asyncio.timeout(self._timeout):
                futures = []
                for event in events:
                    topic, key, value, headers = self._destination(event)
                    future = await producer.send(topic, key=key, value=value, headers=headers)
                    # On timeout the future lives on inside aiokafka; retrieve its outcome so
                    # asyncio does not report "exception was never retrieved".
                    future.add_done_callback(_retrieve)
                    futures.append(future)
                # asyncio.wait (unlike gather) never cancels the delivery futures: they belong
                # to aiokafka's batches.
                await asyncio.wait(futures)
                for future in futures:
                    future.result()
        except MessageSizeTooLargeError as exc:
            raise EventTooLarge("event too large for the broker") from exc
        except TimeoutError as exc:
            raise PublishUnavailable(
                f"broker did not acknowledge {len(events)} event(s) within {self._timeout}s"
            ) from exc
        except KafkaError as exc:
            raise PublishUnavailable(f"broker refused the events: {exc!r}") from exc

    async def ping(self) -> bool:
        """Readiness: connected, and a metadata round trip to the cluster succeeds."""
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(min(PING_TIMEOUT_S, self._timeout)):
                return bool(await producer.client.force_metadata_update())
        except Exception:
            return False


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _quiet_stop(producer: Any) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await producer.stop()
    except Exception as exc:
        log.warning("kafka producer did not stop cleanly", error=repr(exc))
