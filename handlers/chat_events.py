"""Chat events for other services: built from what a batch changed, queued in the outbox in the
same transaction, published by `OutboxRelay` after the commit (and by its sweep after a crash).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pydantic_core
import structlog

from ingest.events import SCHEMA_VERSION, chat_key, make_chat_event_id
from sql import QUERIES

log = structlog.stdlib.get_logger("crm_ingest.outbox")

# A chat event as the JSON object the contract models in ingest/events.py serialize to
# (MessageCreated, MessageUpdated, ClientCreated, ChatCreated, ClientUpdated,
# ClientIdentityConflict), built directly: this is the
# consumer's hot path, and a unit test holds every builder to its model.
Payload = dict[str, Any]
# (payload, inbound event id that caused it)
Queued = tuple[Payload, UUID]
RELAY_LOCK_KEY = 0x63726D5F6F757401


def timestamp(moment: datetime | None) -> str | None:
    """UTC, written the way pydantic writes an aware datetime (columns hold UTC wall time)."""
    if moment is None:
        return None
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def _base(
    event_type: str,
    event_id: str,
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    occurred_at: str | None,  # written by `timestamp`
) -> Payload:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_type": event_type,
        "event_id": event_id,
        "tenant_id": str(tenant_id),
        "client_id": client_id,
        "chat_id": chat_id,
        "occurred_at": occurred_at,
    }


def client_created(
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    at: datetime,
    *,
    first_name: str,
    last_name: str | None,
    phone_number: str | None,
    email: str | None,
) -> Payload:
    event_id = make_chat_event_id("client.created", client_id)
    return {
        **_base("client.created", event_id, tenant_id, client_id, chat_id, timestamp(at)),
        "first_name": first_name,
        "last_name": last_name,
        "phone_number": phone_number,
        "email": email,
    }


def client_updated(
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    at: datetime,
    changes: Sequence[Payload],
    *change_id: object,
) -> Payload:
    """client.updated; `change_id` tells this change of the client from its others."""
    event_id = make_chat_event_id("client.updated", client_id, *change_id)
    return {
        **_base("client.updated", event_id, tenant_id, client_id, chat_id, timestamp(at)),
        "changes": list(changes),
    }


def client_renamed(row: asyncpg.Record, chat_id: int, at: datetime) -> Payload:
    """client.updated for a rename_clients row (a name has one version per client)."""
    changes = [
        {"field": column, "old": row[f"old_{column}"], "new": row[column]}
        for column in ("first_name", "last_name")
        if row[f"old_{column}"] != row[column]
    ]
    return client_updated(
        row["tenant_id"], row["client_id"], chat_id, at, changes, "name", row["version"]
    )


def identity_conflict(row: asyncpg.Record, chat_id: int, at: datetime) -> Payload:
    """client.identity_conflict for a record_identity_conflicts row."""
    event_id = make_chat_event_id(
        "client.identity_conflict",
        row["tenant_id"],
        row["contact_type"],
        row["contact_value"],
        row["linked_value"],
        row["client_id"],
        row["linked_client_id"],
    )
    return {
        **_base(
            "client.identity_conflict",
            event_id,
            row["tenant_id"],
            row["client_id"],
            chat_id,
            timestamp(at),
        ),
        "contact_type": row["contact_type"],
        "contact_value": row["contact_value"],
        "linked_value": row["linked_value"],
        "linked_client_id": row["linked_client_id"],
    }


def chat_created(tenant_id: UUID, client_id: int, chat_id: int, at: datetime) -> Payload:
    event_id = make_chat_event_id("chat.created", chat_id)
    return _base("chat.created", event_id, tenant_id, client_id, chat_id, timestamp(at))


def attachment(
    upload_id: int,
    kind: str,
    provider_ref: str,
    mime_type: str | None,
    filename: str | None,
    size_bytes: int | None,
) -> Payload:
    return {
        "upload_id": upload_id,
        "kind": kind,
        "provider_ref": provider_ref,
        "mime_type": mime_type,
        "filename": filename,
        "size_bytes": size_bytes,
    }


def message_created(
    *,
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    member_id: UUID,
    message_id: int,
    transport: str,
    text: str,
    sent_at: datetime | None,
    attachments: Sequence[Payload],
    command_id: UUID | None = None,
    at: datetime | None = None,
) -> Payload:
    """`command_id` set: an outbound message (a reply), not yet sent, so `sent_at` is null and
    `at` says when it was recorded."""
    event_id = make_chat_event_id("message.created", message_id)
    sent = timestamp(sent_at)
    occurred = timestamp(at) if at else sent  # an inbound message happened when it was sent
    base = _base("message.created", event_id, tenant_id, client_id, chat_id, occurred)
    return {
        **base,
        "member_id": str(member_id),
        "message_id": message_id,
        "transport": transport,
        "text": text,
        "sent_at": sent,
        "attachments": list(attachments),
        "direction": "inbound" if command_id is None else "outbound",
        "command_id": None if command_id is None else str(command_id),
    }


def _updated(
    event_id: str,
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    at: datetime | None,
    message_id: int,
    change: str,
    *,
    text: str | None = None,
    status: str | None = None,
    sent_at: datetime | None = None,
    read_at: datetime | None = None,
    command_id: UUID | None = None,
    error: Payload | None = None,
    attachment: Payload | None = None,
) -> Payload:
    """`message.updated`: what changed is named by `change`; the fields of other changes are
    null."""
    return {
        **_base("message.updated", event_id, tenant_id, client_id, chat_id, timestamp(at)),
        "message_id": message_id,
        "change": change,
        "text": text,
        "status": status,
        "sent_at": timestamp(sent_at),
        "read_at": timestamp(read_at),
        "attachment": attachment,
        "command_id": None if command_id is None else str(command_id),
        "error": error,
    }


def message_edited(
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    row: asyncpg.Record,
    text: str,
    version: int,
    at: datetime,
) -> Payload:
    event_id = make_chat_event_id("message.updated", row["id"], "edited", version)
    return _updated(
        event_id,
        tenant_id,
        client_id,
        chat_id,
        at,
        row["id"],
        "edited",
        text=text,
        sent_at=row["sent_at"],
        read_at=row["read_at"],
    )


def status_changed(row: asyncpg.Record) -> Payload:
    """A provider status settled onto a message; `command_id` is set when it is a reply."""
    event_id = make_chat_event_id("message.updated", row["message_id"], "status", row["status"])
    return _updated(
        event_id,
        row["tenant_id"],
        row["client_id"],
        row["chat_id"],
        row["status_at"],
        row["message_id"],
        "status",
        status=row["status"],
        sent_at=row["sent_at"],
        read_at=row["read_at"],
        command_id=row["command_id"],
    )


def send_accepted(
    tenant_id: UUID, client_id: int, chat_id: int, message_id: int, command_id: UUID, at: datetime
) -> Payload:
    """The provider took an outbound message (`status: accepted`)."""
    event_id = make_chat_event_id("message.updated", message_id, "status", "accepted")
    return _updated(
        event_id,
        tenant_id,
        client_id,
        chat_id,
        at,
        message_id,
        "status",
        status="accepted",
        command_id=command_id,
    )


def send_failed(
    tenant_id: UUID,
    client_id: int,
    chat_id: int,
    message_id: int,
    command_id: UUID,
    at: datetime,
    *,
    code: str,
    message: str,
    retryable: bool,
) -> Payload:
    """An outbound message that did not go out, or whose fate is unknown (`outcome_unknown`)."""
    event_id = make_chat_event_id("message.updated", message_id, "failed")
    return _updated(
        event_id,
        tenant_id,
        client_id,
        chat_id,
        at,
        message_id,
        "failed",
        command_id=command_id,
        error={"code": code, "message": message, "retryable": retryable},
    )


def attachment_changed(row: asyncpg.Record, outcome: Payload) -> Payload:
    """An attachment's fetch ended: `outcome` is {status, path, size, hash, mimetype, error}.
    One id per upload, outcome and attempt: a retried upload's later outcome is a new event."""
    status = outcome["status"]
    event_id = make_chat_event_id(
        "message.updated",
        row["message_id"],
        "attachment",
        row["upload_id"],
        status,
        row["attempts"],
    )
    return _updated(
        event_id,
        row["tenant_id"],
        row["client_id"],
        row["chat_id"],
        datetime.now(UTC),
        row["message_id"],
        "attachment",
        attachment={"upload_id": row["upload_id"], **outcome},
    )


async def enqueue(conn: asyncpg.Connection, queued: Sequence[Queued]) -> None:
    if not queued:
        return
    await conn.execute(
        QUERIES["enqueue_chat_events"],
        [payload for payload, _ in queued],
        [source for _, source in queued],
    )


def outbound_message(payload: Payload) -> tuple[str, bytes, dict[str, str]]:
    """Kafka key (the chat: its events stay in order), value and headers of a chat event."""
    headers = {
        "event-type": payload["event_type"],
        "event-id": payload["event_id"],
        "schema-version": str(SCHEMA_VERSION),
        "content-type": "application/json",
    }
    key = chat_key(payload["tenant_id"], payload["chat_id"])
    return key, pydantic_core.to_json(payload), headers


Publish = Callable[[Sequence[tuple[str, bytes, dict[str, str]]]], Awaitable[None]]


class OutboxRelay:
    """Publishes pending outbox rows in commit order; one relay at a time (advisory lock)."""

    def __init__(
        self, pool: asyncpg.Pool, publish: Publish, *, batch: int = 8, retention_hours: int = 168
    ) -> None:
        self._pool = pool
        self._publish = publish
        self._batch = batch  # outbox rows per publish: each holds one transaction's events
        self._retention_hours = retention_hours
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    async def flush(self) -> int:
        """Publish everything pending now; returns how many outbox rows were published."""
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
            messages = [
                outbound_message(payload)
                for row in rows
                for payload in pydantic_core.from_json(row["events"])
            ]
            await self._publish(messages)
            await conn.execute(QUERIES["mark_published"], [row["seq"] for row in rows])
            return len(rows)

    async def purge(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(QUERIES["purge_published"], self._retention_hours)

    def wake(self) -> None:
        """Ask the running relay to publish now (after a batch commit), without waiting for it."""
        self._wake.set()

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Publishes when woken after a commit, and every `interval_s` anyway: the sweep that
        publishes what a crashed process or a failed publish left pending."""
        sweeps = 0
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.flush()
                sweeps += 1
                if sweeps % 3600 == 0:
                    await self.purge()
            except Exception as exc:  # the next round retries; rows stay pending
                log.warning("outbox relay failed, will retry", error=repr(exc))
            woken = asyncio.ensure_future(self._wake.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({woken, stopped}, timeout=interval_s, return_when="FIRST_COMPLETED")
            woken.cancel()
            stopped.cancel()
