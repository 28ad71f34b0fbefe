"""EventPublisher behaviour that needs no broker: a fake producer stands in for aiokafka."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from ingest.config import Settings
from ingest.errors import EventTooLarge, PublishUnavailable
from ingest.events import StatusEvent, decode_event
from ingest.publisher import EventPublisher

TENANT = uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b")
CHANNEL = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
SETTINGS = Settings(publish_timeout_s=0.2, topic_prefix="t.")


def event(n: int, transport: str = "whatsapp") -> StatusEvent:
    return StatusEvent(
        event_id=uuid.uuid4(),
        tenant_id=TENANT,
        channel_id=CHANNEL,
        transport=transport,  # type: ignore[arg-type]
        conversation_key=f"{TENANT}:{transport}:+100{n}",
        received_at=datetime(2024, 5, 1, tzinfo=UTC),
        correlation_id="corr",
        event_type="message.status",
        external_message_id=f"wamid.{n}",
        status="delivered",
        status_at=datetime(2024, 5, 1, tzinfo=UTC),
    )


class FakeProducer:
    """Records sends; `outcome` decides each delivery future (None = acknowledged)."""

    def __init__(self, *, start_error: BaseException | None = None) -> None:
        self.start_error = start_error
        self.sent: list[dict[str, Any]] = []
        self.outcome: BaseException | str | None = None  # "hang": never acknowledged
        self.started = self.stopped = False
        self.client = self

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append({"topic": topic, **kwargs})
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if isinstance(self.outcome, BaseException):
            future.set_exception(self.outcome)
        elif self.outcome is None:
            future.set_result(None)
        return future

    async def force_metadata_update(self) -> bool:
        return self.outcome is None


class Factory:
    def __init__(self, *producers: FakeProducer) -> None:
        self.producers = list(producers)
        self.made: list[FakeProducer] = []

    def __call__(self) -> FakeProducer:
        producer = self.producers.pop(0) if len(self.producers) > 1 else self.producers[0]
        self.made.append(producer)
        return producer


async def started(*producers: FakeProducer) -> EventPublisher:
    publisher = EventPublisher(
        SETTINGS, producer_factory=Factory(*producers), reconnect_initial_s=0.01
    )
    await publisher.start()
    return publisher


async def test_empty_list_is_a_no_op_even_unstarted() -> None:
    await EventPublisher(SETTINGS).publish([])


async def test_unstarted_publisher_is_unavailable() -> None:
    publisher = EventPublisher(SETTINGS)
    with pytest.raises(PublishUnavailable):
        await publisher.publish([event(1)])
    assert not await publisher.ping()


async def test_publish_sends_each_event_to_its_transport_topic() -> None:
    producer = FakeProducer()
    publisher = await started(producer)
    events = [event(1), event(2, "sms")]
    await publisher.publish(events)
    assert [s["topic"] for s in producer.sent] == ["t.inbound.whatsapp", "t.inbound.sms"]
    first = producer.sent[0]
    assert first["key"] == events[0].conversation_key.encode()
    assert decode_event(first["value"]) == events[0]
    assert ("event-type", b"message.status") in first["headers"]
    assert ("correlation-id", b"corr") in first["headers"]
    assert await publisher.ping()
    await publisher.stop()
    assert producer.stopped


@pytest.mark.parametrize("outcome", [KafkaTimeoutError(), KafkaConnectionError(), "hang"])
async def test_unacknowledged_events_are_unavailable(outcome: Any) -> None:
    producer = FakeProducer()
    publisher = await started(producer)
    producer.outcome = outcome
    with pytest.raises(PublishUnavailable):
        await publisher.publish([event(1), event(2)])
    await publisher.stop()


async def test_broker_down_at_start_is_retried_in_the_background() -> None:
    down = FakeProducer(start_error=KafkaConnectionError("no broker"))
    up = FakeProducer()
    publisher = await started(down, down, up)  # start() returns although the broker is down
    with pytest.raises(PublishUnavailable):
        await publisher.publish([event(1)])
    for _ in range(100):
        if publisher.connected:
            break
        await asyncio.sleep(0.01)
    assert publisher.connected
    assert down.stopped  # the failed clients were closed
    await publisher.publish([event(1)])
    assert len(up.sent) == 1
    await publisher.stop()


async def test_stop_cancels_a_pending_reconnect() -> None:
    publisher = await started(FakeProducer(start_error=KafkaConnectionError("no broker")))
    await publisher.stop()
    assert not publisher.connected
    with pytest.raises(PublishUnavailable):
        await publisher.publish([event(1)])


async def test_configuration_errors_are_not_retried() -> None:
    def broken() -> Any:
        raise RuntimeError("Compression library for zstd not found")

    with pytest.raises(RuntimeError, match="zstd"):
        await EventPublisher(SETTINGS, producer_factory=broken).start()


async def test_an_event_over_the_brokers_size_limit_is_refused_for_good() -> None:
    producer = FakeProducer()
    publisher = await started(producer)
    producer.outcome = MessageSizeTooLargeError()
    with pytest.raises(EventTooLarge) as refused:
        await publisher.publish([event(1)])
    assert (refused.value.status_code, refused.value.reason) == (
        413,
        "event too large for the broker",
    )
    await publisher.stop()
