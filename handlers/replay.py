"""Ops: re-feed a topic range or dead letters through the same pipeline as the live consumer.

Topic replay reads with direct partition assignment and no consumer group, so it never moves
the live group's offsets. A range ends at its `--to` bound or, without one, when no record has
arrived for `idle_timeout_s`: the broker's reported end offsets are not trusted (the embedded
broker reports a wrong high watermark). Everything is idempotent, so replaying any range
leaves the database as it was and queues no new chat events (`reemit` queues the already
published ones of the range again, with their original ids).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from handlers.dead_letters import DeadLetterSink
from handlers.ingestor import BatchReport, Record
from handlers.outbound.consumer import dispatch_records, open_dispatcher
from handlers.pipeline import build_pipeline, producer_publishers
from ingest.config import Settings
from ingest.events import (
    MessageEvent,
    RawWebhook,
    StatusEvent,
    decode_command,
    decode_event,
    decode_raw_webhook,
    encode_event,
    event_headers,
)
from sql import QUERIES
from sql.db import create_pool

Progress = Callable[[dict[str, Any]], None]


class Reparsed(Protocol):
    @property
    def events(self) -> Sequence[MessageEvent | StatusEvent]: ...

    @property
    def still_kept(self) -> tuple[str, str] | None:
        """(reason, reason kind; "" when the failure is not the parser's) if still kept."""
        ...


# Parses a kept webhook again with the current adapter code (built by the edge: ingest.intake).
Reparse = Callable[[RawWebhook], Awaitable[Reparsed]]


@dataclass(slots=True)
class ReplaySummary:
    read: int = 0
    applied: int = 0
    already_present: int = 0
    dead_lettered: int = 0
    invalid: int = 0
    reemitted: int = 0
    partitions: dict[int, dict[str, int]] = field(default_factory=dict)

    def add(self, report: BatchReport) -> None:
        self.applied += report.outcome.messages_created + report.outcome.messages_edited
        self.already_present += report.outcome.already_present
        self.dead_lettered += report.dead_lettered
        self.invalid += report.invalid

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "applied": self.applied,
            "already_present": self.already_present,
            "dead_lettered": self.dead_lettered,
            "invalid": self.invalid,
            "reemitted": self.reemitted,
            "partitions": {str(p): v for p, v in sorted(self.partitions.items())},
        }


@dataclass(frozen=True, slots=True)
class Range:
    from_time: datetime | None = None
    from_offset: int | None = None
    to_time: datetime | None = None
    to_offset: int | None = None  # inclusive
    partition: int | None = None

    def past_end(self, record: Any) -> bool:
        if self.to_offset is not None and record.offset > self.to_offset:
            return True
        return self.to_time is not None and record.timestamp > self.to_time.timestamp() * 1000


async def _start_offsets(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], bounds: Range
) -> dict[TopicPartition, int]:
    if bounds.from_offset is not None:
        return {tp: bounds.from_offset for tp in partitions}
    assert bounds.from_time is not None
    found = await consumer.offsets_for_times(
        {tp: int(bounds.from_time.timestamp() * 1000) for tp in partitions}
    )
    return {tp: hit.offset for tp, hit in found.items() if hit is not None}


async def replay_topic(
    settings: Settings,
    topic: str,
    bounds: Range,
    *,
    dry_run: bool = False,
    reemit: bool = False,
    idle_timeout_s: float = 5.0,
    progress: Progress | None = None,
) -> ReplaySummary:
    summary = ReplaySummary()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-replay",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    pool = None if dry_run else await create_pool(settings.database_url, max_size=2)
    try:
        if topic not in await consumer.topics():  # also loads the metadata read below
            raise LookupError(f"unknown topic {topic}")
        known = consumer.partitions_for_topic(topic) or set()
        if not known:
            raise LookupError(f"unknown topic {topic}")
        wanted = [p for p in sorted(known) if bounds.partition in (None, p)]
        if not wanted:
            raise LookupError(f"topic {topic} has no partition {bounds.partition}")
        partitions = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(partitions)
        starts = await _start_offsets(consumer, partitions, bounds)
        for tp in partitions:
            if tp in starts:
                consumer.seek(tp, starts[tp])
            else:
                consumer.pause(tp)  # nothing at or after --from in this partition
        active = {tp for tp in partitions if tp in starts}
        for tp in active:
            summary.partitions[tp.partition] = {"from": starts[tp], "read": 0}
        commands = topic == settings.outbound_commands_topic
        async with (
            producer_publishers(settings) as (dead_letter, chat_events),
            contextlib.AsyncExitStack() as stack,
        ):
            pipeline = (
                None
                if pool is None
                else build_pipeline(
                    settings, pool, publish_dead_letter=dead_letter, publish_chat_events=chat_events
                )
            )
            # The commands topic goes through the reply dispatcher: executed once, per id.
            dispatcher = (
                await stack.enter_async_context(
                    open_dispatcher(settings, pool, dead_letter, pipeline.relay.wake)
                )
                if commands and pool is not None and pipeline is not None
                else None
            )
            last_record = time.monotonic()
            while active and time.monotonic() - last_record < idle_timeout_s:
                fetched = await consumer.getmany(*active, timeout_ms=200, max_records=500)
                batch: list[Record] = []
                for tp, records in fetched.items():
                    for record in records:
                        if bounds.past_end(record):
                            active.discard(tp)
                            consumer.pause(tp)
                            break
                        batch.append(record)
                        summary.partitions[tp.partition]["read"] += 1
                if not batch:
                    continue
                last_record = time.monotonic()
                summary.read += len(batch)
                if pipeline is None:
                    summary.invalid += sum(1 for r in batch if not _valid(r, commands))
                elif dispatcher is not None:
                    summary.add(await dispatch_records(dispatcher, batch))
                else:
                    summary.add(await pipeline.ingestor.handle(batch))
                    if reemit:
                        summary.reemitted += await _reemit(pool, batch)
                    await pipeline.relay.flush()
                if progress:
                    progress({"read": summary.read, "partitions": summary.partitions})
    finally:
        await consumer.stop()
        if pool is not None:
            await pool.close()
    return summary


def _valid(record: Record, command: bool = False) -> bool:
    try:
        (decode_command if command else decode_event)(record.value or b"")
    except ValidationError:
        return False
    return True


async def _reemit(pool: asyncpg.Pool | None, batch: Sequence[Record]) -> int:
    ids = []
    for record in batch:
        for name, value in record.headers:
            if name == "event-id":
                with contextlib.suppress(ValueError):
                    ids.append(uuid.UUID(value.decode()))
    assert pool is not None
    return int(await pool.fetchval(QUERIES["reemit_chat_events"], ids) or 0)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A dead letter, shaped like the Kafka record it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


async def list_dead_letters(
    settings: Settings, *, include_replayed: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        rows = await pool.fetch(QUERIES["list_dead_letters"], include_replayed, limit)
    finally:
        await pool.close()
    return [
        {**dict(row), "event_id": str(row["event_id"]) if row["event_id"] else None} for row in rows
    ]


def _stored(row: Any, event: MessageEvent | StatusEvent) -> StoredRecord:
    """An event re-parsed from a kept webhook, at the kept webhook's coordinates."""
    return StoredRecord(
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        event.conversation_key.encode(),
        encode_event(event),
        event_headers(event),
    )


async def _reparse(row: Any, reparse: Reparse | None) -> Reparsed | tuple[str, str]:
    if reparse is None:
        return row["error_message"], ""
    try:
        record = decode_raw_webhook(row["payload"])
    except ValidationError:
        return row["error_message"], ""
    return await reparse(record)


async def replay_dead_letters(
    settings: Settings, ids: Sequence[int] | None, *, reparse: Reparse | None = None
) -> dict[str, Any]:
    """Feed dead letters through the pipeline again; those that succeed are marked replayed,
    those that fail again stay (with the new error) for the next attempt.

    Kept webhooks are parsed again with `reparse` (the current adapter code) and their events
    ingested; one still not processable stays, with the same reason when its kind is the same.
    """
    pool = await create_pool(settings.database_url, max_size=2)
    failed_again: set[tuple[str, int, int]] = set()
    still: dict[int, tuple[str, str]] = {}
    try:
        rows = await pool.fetch(QUERIES["dead_letters_for_replay"], list(ids) if ids else None)
        kept_at = {
            (r["source_topic"], r["source_partition"], r["source_offset"]): r
            for r in rows
            if r["reason_kind"] is not None
        }
        async with producer_publishers(settings) as (dead_letter, chat_events):
            sink = DeadLetterSink(pool, dead_letter)

            async def record_failure(record: Record, exc: BaseException) -> None:
                at = (record.topic, record.partition, record.offset)
                failed_again.add(at)
                if (row := kept_at.get(at)) is not None:
                    # An event of a kept webhook: the webhook stays the dead letter.
                    still[row["id"]] = (f"{type(exc).__name__}: {exc}"[:500], "")
                else:
                    await sink(record, exc)

            pipeline = build_pipeline(
                settings,
                pool,
                publish_dead_letter=dead_letter,
                publish_chat_events=chat_events,
                dead_letter=record_failure,
            )
            records: list[StoredRecord] = []
            for row in rows:
                if row["reason_kind"] is None:
                    records.append(
                        StoredRecord(
                            row["source_topic"],
                            row["source_partition"],
                            row["source_offset"],
                            row["kafka_key"],
                            row["payload"],
                            [(k, str(v).encode()) for k, v in row["headers"].items()],
                        )
                    )
                    continue
                outcome = await _reparse(row, reparse)
                if isinstance(outcome, tuple):
                    still[row["id"]] = outcome
                    continue
                records += [_stored(row, event) for event in outcome.events]
                if outcome.still_kept is not None:
                    still[row["id"]] = outcome.still_kept
            # Dead-lettered commands go to the reply dispatcher, everything else to the ingestor.
            commands = [r for r in records if r.topic == settings.outbound_commands_topic]
            events = [r for r in records if r.topic != settings.outbound_commands_topic]
            report = await pipeline.ingestor.handle(events) if events else BatchReport()
            if commands:
                async with open_dispatcher(
                    settings, pool, dead_letter, pipeline.relay.wake, record_failure
                ) as dispatcher:
                    executed = await dispatch_records(dispatcher, commands)
                report.outcome.messages_created += executed.outcome.messages_created
                report.outcome.already_present += executed.outcome.already_present
            replayed = [
                row["id"]
                for row in rows
                if (row["source_topic"], row["source_partition"], row["source_offset"])
                not in failed_again
                and row["id"] not in still
            ]
            await pool.execute(QUERIES["mark_dead_letters_replayed"], replayed)
            by_id = {row["id"]: row for row in rows}
            for row_id, (reason, kind) in still.items():
                row = by_id[row_id]
                if kind == row["reason_kind"]:
                    reason = row["error_message"]  # the same failure keeps its recorded reason
                # kind "": not a parse outcome (channel, store, database): this attempt's reason
                await pool.execute(
                    QUERIES["keep_dead_letter_pending"], row_id, reason, kind or row["reason_kind"]
                )
            await pipeline.relay.flush()
    finally:
        await pool.close()
    return {
        "selected": len(rows),
        "replayed": len(replayed),
        "still_failing": len(failed_again | {_at(by_id[i]) for i in still}),
        "created": report.outcome.messages_created,
        "already_present": report.outcome.already_present,
    }


def _at(row: Any) -> tuple[str, int, int]:
    return row["source_topic"], row["source_partition"], row["source_offset"]
