"""What the adapter unit tests share: captured payloads, a parse context for a channel, requests,
and the checks every event of an accepted request must pass."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from ingest.config import Transport
from ingest.events import (
    MessageEvent,
    StatusEvent,
    conversation_key,
    decode_event,
    encode_event,
    make_event_id,
)
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
TENANT_ID = uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b")
RECEIVED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EventT = TypeVar("EventT", MessageEvent, StatusEvent)


def captured(transport: Transport, filename: str) -> bytes:
    """A provider payload kept under tests/payloads/<transport>/ (sources in SOURCES.md)."""
    return (PAYLOADS / transport / filename).read_bytes()


def ts(seconds: int) -> datetime:
    """A provider's Unix time as the aware UTC datetime an event must carry, computed here
    rather than with the adapters' own `utc_from_unix`."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def context(
    channel: Channel, *, received_at: datetime = RECEIVED_AT, correlation_id: str | None = "corr-1"
) -> ParseContext:
    return ParseContext(channel=channel, received_at=received_at, correlation_id=correlation_id)


def channel(transport: Transport, channel_id: uuid.UUID, config: dict[str, Any]) -> Channel:
    return Channel(id=channel_id, tenant_id=TENANT_ID, transport=transport, config=config)


def post(url: str, body: bytes, headers: Mapping[str, str | None]) -> RawRequest:
    """A webhook POST; a header given as None is not sent, so a test can leave any one out."""
    sent = {name: value for name, value in headers.items() if value is not None}
    return RawRequest(method="POST", url=url, headers=sent, body=body)


def only_event(result: WebhookResult, kind: type[EventT]) -> EventT:
    """The single event of an accepted request; it must survive the Kafka encoding unchanged."""
    assert result.ignored is None
    [event] = result.events
    assert isinstance(event, kind)
    assert decode_event(encode_event(event)) == event
    return event


def envelope(
    transport: Transport,
    channel_id: uuid.UUID,
    identity: str,
    *provider_ids: object,
    received_at: datetime = RECEIVED_AT,
) -> dict[str, Any]:
    """The fields an event parsed in `context()` takes from its request rather than its content,
    derived here from the id and key functions so an adapter cannot get them wrong unnoticed."""
    return {
        "schema_version": 1,
        "event_id": make_event_id(channel_id, transport, *provider_ids),
        "tenant_id": TENANT_ID,
        "channel_id": channel_id,
        "transport": transport,
        "conversation_key": conversation_key(TENANT_ID, transport, identity),
        "received_at": received_at,
        "correlation_id": "corr-1",
    }


def assert_envelope(
    event: MessageEvent | StatusEvent,
    transport: Transport,
    channel_id: uuid.UUID,
    *provider_ids: object,
    identity: str | None = None,
) -> None:
    """`event` carries the `envelope` of its provider ids, keyed by `identity` (by default the
    sender's contact value), and survives the Kafka encoding unchanged."""
    if identity is None:
        assert isinstance(event, MessageEvent)
        identity = event.sender.contact_value
    expected = envelope(transport, channel_id, identity, *provider_ids)
    assert {name: getattr(event, name) for name in expected} == expected
    assert decode_event(encode_event(event)) == event
