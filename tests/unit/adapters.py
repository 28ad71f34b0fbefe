"""What the adapter unit tests share: captured payloads and a parse context for a channel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.config import Transport
from ingest.transports.base import Channel, ParseContext

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
TENANT_ID = uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b")
RECEIVED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def captured(transport: Transport, filename: str) -> bytes:
    """A provider payload kept under tests/payloads/<transport>/ (sources in SOURCES.md)."""
    return (PAYLOADS / transport / filename).read_bytes()


def context(
    channel: Channel, *, received_at: datetime = RECEIVED_AT, correlation_id: str | None = "corr-1"
) -> ParseContext:
    return ParseContext(channel=channel, received_at=received_at, correlation_id=correlation_id)


def channel(transport: Transport, channel_id: uuid.UUID, config: dict[str, Any]) -> Channel:
    return Channel(id=channel_id, tenant_id=TENANT_ID, transport=transport, config=config)
