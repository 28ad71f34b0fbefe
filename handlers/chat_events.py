"""Chat events for other services: built from what a batch changed, queued in the outbox in the
same transaction, published by `OutboxRelay` after the commit (and by its sweep after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from handlers.pg import pg_json
from ingest.events import (
    ChatAttachment,
    ChatCreated,
    ClientCreated,
    MessageCreated,
    MessageUpdated,
    chat_event_adapter,
    chat_key,
    make_chat_event_id,
)
from sql import QUERIES

log = structlog.stdlib.get_logger("crm_ingest.outbox")

ChatEvent = MessageCreated | MessageUpdated | ClientCreated | ChatCreated
# (event, inbound event id that caused it)
Queued = tuple[ChatEvent, UUID]
RELAY_LOCK_KEY = 0x63726D5F6F757401


def aware(moment: datetime | None) -> datetime | None:
    """Columns are UTC wall time; events carry explicit UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def client_created(
    tenant_id: UUID, client_id: int, chat_id: int, at: datetime, **names: Any
) -> ClientCreated:
    return ClientCreated(
        event_id=make_chat_event_id("client.created", client_id),
        tenant_id=tenant_id,
        client_id=client_id,
        chat_id=chat_id,
        occurred_at=at,
        **names,
    )


def chat_created(tenant_id: UUID, client_id: int, chat_id: int, at: datetime) -> ChatCreated:
    return ChatCreated(
        event_id=make_chat_event_id("chat.created", chat_id),
        tenant_id=tenant_id,
        client_id=client_id,
        chat_id=chat_id,
        occurred_at=at,
    )


def message_created(
    *,
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    member_id: UUID,
    message_id: int,
    transport: Any,
    text: str,
    sent_at: datetime,
    attachments: Sequence[ChatAttachment],
) -> MessageCreated:
    return MessageCreated(
        event_id=make_chat_event_id("message.created", message_id),
        tenant_id=tenant_id,
        client_id=client_id,
        chat_id=chat_id,
        occurred_at=sent_at,
        member_id=member_id,
        message_id=message_id,
        transport=transport,
        text=text,
        sent_at=sent_at,
        attachments=list(attachments),
    )


def message_edited(
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    row: asyncpg.Record,
    text: str,
    version: int,
    at: datetime,
) -> MessageUpdated:
    return MessageUpdated(
        event_id=make_chat_event_id("message.updated", row["id"], "edited", version),
        tenant_id=tenant_id,
        client_id=client_id,
        chat_id=chat_id,
        occurred_at=at,
        message_id=row["id"],
        change="edited",
        text=text,
        sent_at=aware(row["sent_at"]),
        read_at=aware(row["read_at"]),
    )


def status_changed(row: asyncpg.Record) -> MessageUpdated:
    return MessageUpdated(
        event_id=make_chat_event_id("message.updated", row["message_id"], "status", row["status"]),
        tenant_id=row["tenant_id"],
        client_id=row["client_id"],
        chat_id=row["chat_id"],
        occurred_at=aware(row["status_at"]),
        message_id=row["message_id"],
        change="status",
        status=row["status"],
        sent_at=aware(row["sent_at"]),
        read_at=aware(row["read_at"]),
    )


async def enqueue(conn: asyncpg.Connection, queued: Sequence[Queued]) -> None:
    if not queued:
        return
    await conn.execute(
        QUERIES["enqueue_chat_events"],
        [event.event_id for event, _ in queued],
        [event.event_type for event, _ in queued],
        [chat_key(event.tenant_id, event.chat_id) for event, _ in queued],
        [pg_json(event.model_dump(mode="json")) for event, _ in queued],
        [source for _, source in queued],
    )


Publish = Callable[[Sequence[tuple[str, bytes, dict[str, str]]]], Awaitable[None]]


class OutboxRelay:
    """Publishes pending outbox rows in commit order; one relay at a time (advisory lock)."""

    def __init__(
        self, pool: asyncpg.Pool, publish: Publish, *, batch: int = 1000, retention_hours: int = 168
    ) -> None:
        self._pool = pool
        self._publish = publish
        self._batch = batch
        self._retention_hours = retention_hours
        self._lock = asyncio.Lock()

    async def flush(self) -> int:
        """Publish everything pending now; returns how many were published."""
        published = 0
        async with self._lock:
            while True:
                sent = await self._flush_once()
                published += sent
                if sent < self._batch:
                    return published

    async def _flush_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(QUERIES["lock_relay"], RELAY_LOCK_KEY):
                return 0  # another process is relaying; it will publish these
            rows = await conn.fetch(QUERIES["pending_chat_events"], self._batch)
            if not rows:
                return 0
            messages = []
            for row in rows:
                event = chat_event_adapter.validate_python(row["payload"])
                headers = {
                    "event-type": row["event_type"],
                    "event-id": str(row["event_id"]),
                    "schema-version": str(event.schema_version),
                    "content-type": "application/json",
                }
                messages.append((row["kafka_key"], event.model_dump_json().encode(), headers))
            await self._publish(messages)
            await conn.execute(QUERIES["mark_published"], [row["seq"] for row in rows])
            return len(rows)

    async def purge(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(QUERIES["purge_published"], self._retention_hours)

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """The sweep: publishes what a crashed or failed flush left behind."""
        sweeps = 0
        while not stop.is_set():
            try:
                await self.flush()
                sweeps += 1
                if sweeps % 3600 == 0:
                    await self.purge()
            except Exception as exc:  # the next sweep retries; rows stay pending
                log.warning("outbox relay failed, will retry", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
