"""The consumer's core: a batch of Kafka records -> one PostgreSQL transaction -> outcome.

Failure policy (offsets are committed by the caller only after `handle` returns):
- Transient failures (PostgreSQL unreachable, restarting, out of connections) are retried with
  capped exponential backoff for as long as it takes; nothing is committed or dead-lettered.
- Races (deadlock, serialization, a concurrent writer's rolled-back claim) are retried a few
  times, then treated like permanent failures.
- Permanent failures (a value PostgreSQL refuses, a constraint retrying cannot fix) are isolated
  by splitting the batch in halves until the poison events stand alone; those are dead-lettered
  and every healthy event of the batch is still written. Writes are idempotent, so committing
  halves separately is safe.
- Records that are not valid events of the contract are dead-lettered without touching the DB.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg
import structlog
from pydantic import ValidationError

from handlers.chat_events import enqueue
from handlers.identities import LostRace
from handlers.pg import without_nul
from handlers.statuses import log_statuses, settle_statuses
from handlers.store import BatchOutcome, write_messages
from ingest.events import MessageEvent, StatusEvent, decode_event
from sql import QUERIES
from sql.db import pooled

log = structlog.stdlib.get_logger("crm_ingest.consumer")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
RACE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.UniqueViolationError,
    asyncpg.QueryCanceledError,
    LostRace,
)
RACE_RETRIES = 5
T = TypeVar("T")


class Record(Protocol):
    """The parts of an aiokafka ConsumerRecord the core reads (read-only, so a frozen dataclass
    such as a stored dead letter is one too)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


DeadLetter = Callable[[Record, BaseException], Awaitable[None]]


@dataclass(slots=True)
class BatchReport:
    records: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    outcome: BatchOutcome = field(default_factory=BatchOutcome)

    def add(self, other: BatchOutcome) -> None:
        self.outcome.events += other.events
        self.outcome.messages_created += other.messages_created
        self.outcome.messages_edited += other.messages_edited
        self.outcome.already_present += other.already_present
        self.outcome.clients_created += other.clients_created
        self.outcome.chats_created += other.chats_created
        self.outcome.created_message_ids += other.created_message_ids
        self.outcome.media_jobs += other.media_jobs


@dataclass(slots=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep

    async def wait(self, attempt: int) -> None:
        await self.sleep(min(self.max_s, self.initial_s * 2**attempt))


class ForeignChannel(Exception):
    """An event's channel is unknown, or belongs to another tenant than the event names."""


class ChannelOwners:
    """Which tenant each channel belongs to, as the database says. Known channels are cached
    (a channel never changes tenant); unknown ones are asked again next time, so an event
    dead-lettered for an unknown channel succeeds on `dlq replay` once the channel exists."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = 300.0) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._known: dict[UUID, tuple[UUID, float]] = {}

    async def owners(self, channel_ids: set[UUID]) -> dict[UUID, UUID]:
        now = time.monotonic()
        found = {c: hit[0] for c in channel_ids if (hit := self._known.get(c)) and hit[1] > now}
        missing = [c for c in channel_ids if c not in found]
        if missing:
            for row in await self._pool.fetch(QUERIES["channel_tenants"], missing):
                found[row["id"]] = row["tenant_id"]
                self._known[row["id"]] = (row["tenant_id"], now + self._ttl_s)
        return found


class Ingestor:
    def __init__(self, pool: asyncpg.Pool, dead_letter: DeadLetter, backoff: Backoff) -> None:
        self._pool = pool
        self._dead_letter = dead_letter
        self._backoff = backoff
        self._channels = ChannelOwners(pool)

    async def handle(self, records: Sequence[Record]) -> BatchReport:
        report = BatchReport(records=len(records))
        decoded: list[tuple[Record, MessageEvent | StatusEvent]] = []
        for record in records:
            try:
                decoded.append((record, decode_event(without_nul(record.value or b""))))
            except ValidationError as exc:
                report.invalid += 1
                await self._reject(record, exc, report)
        channel_ids = {event.channel_id for _, event in decoded}
        owners = await self._retrying(lambda: self._channels.owners(channel_ids))
        trusted = []
        for record, event in decoded:
            # The tenant comes from the channel, never from the record: a forged or stale
            # record naming another tenant cannot write into that tenant's rows.
            if owners.get(event.channel_id) != event.tenant_id:
                owner = owners.get(event.channel_id)
                problem = "unknown channel" if owner is None else "belongs to another tenant"
                await self._reject(
                    record, ForeignChannel(f"channel {event.channel_id} {problem}"), report
                )
            else:
                trusted.append((record, event))
        if trusted:
            await self._apply_isolating(trusted, report)
        return report

    async def _apply_isolating(
        self, items: Sequence[tuple[Record, MessageEvent | StatusEvent]], report: BatchReport
    ) -> None:
        try:
            report.add(await self._apply_retrying([event for _, event in items]))
        except Exception as exc:
            if _is_transient(exc):
                raise
            if len(items) == 1:
                await self._reject(items[0][0], exc, report)
                return
            middle = len(items) // 2
            await self._apply_isolating(items[:middle], report)
            await self._apply_isolating(items[middle:], report)

    async def _apply_retrying(self, events: Sequence[MessageEvent | StatusEvent]) -> BatchOutcome:
        return await self._retrying(lambda: self._apply(events))

    async def _retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        attempt = races = 0
        while True:
            try:
                return await work()
            except RACE_ERRORS as exc:
                races += 1
                if races > RACE_RETRIES:
                    raise
                log.warning("batch raced, retrying", error=repr(exc), attempt=races)
            except TRANSIENT_ERRORS as exc:
                log.warning("database unavailable, retrying", error=repr(exc), attempt=attempt)
            await self._backoff.wait(attempt)
            attempt += 1

    async def _apply(self, events: Sequence[MessageEvent | StatusEvent]) -> BatchOutcome:
        async with self._pool.acquire() as proxy, proxy.transaction():
            return await apply_batch(pooled(proxy), events)

    async def _reject(self, record: Record, exc: BaseException, report: BatchReport) -> None:
        log_dead_letter("event dead-lettered", record, exc)
        await self._dead_letter(record, exc)
        report.dead_lettered += 1


_LOGGED_HEADERS = {
    "event-id": "event_id",
    "correlation-id": "correlation_id",
    "event-type": "event_type",
}


def record_ids(record: Record) -> dict[str, str]:
    """The ids a record's headers carry, named for log lines."""
    return {
        _LOGGED_HEADERS[name]: value.decode("utf-8", "replace")
        for name, value in record.headers
        if name in _LOGGED_HEADERS
    }


def log_dead_letter(event: str, record: Record, exc: BaseException) -> None:
    """The one log line of a record that goes to the dead letters: where it was, and why."""
    log.error(
        event,
        **record_ids(record),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        error_class=type(exc).__name__,
        error=str(exc)[:500],
    )


def correlation_ids(records: Sequence[Record], limit: int = 20) -> list[str]:
    """Distinct correlation ids of a batch (capped), so a webhook can be followed into it."""
    seen: dict[str, None] = {}
    for record in records:
        for name, value in record.headers:
            if name == "correlation-id" and len(seen) < limit:
                seen[value.decode("utf-8", "replace")] = None
    return list(seen)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


async def apply_batch(
    conn: asyncpg.Connection, events: Sequence[MessageEvent | StatusEvent]
) -> BatchOutcome:
    """Every statement of one batch, in the caller's transaction."""
    messages = [e for e in events if isinstance(e, MessageEvent)]
    statuses = [e for e in events if isinstance(e, StatusEvent)]
    # New messages may have statuses waiting for them; new statuses may have messages.
    sources = {(e.channel_id, e.external_message_id): e.event_id for e in messages}
    sources.update({(e.channel_id, e.external_message_id): e.event_id for e in statuses})
    outcome = await write_messages(conn, messages)
    await log_statuses(conn, statuses)
    outcome.chat_events += await settle_statuses(conn, sources)
    await enqueue(conn, outcome.chat_events)
    return outcome
