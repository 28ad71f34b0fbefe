"""The fetch-job queue in PostgreSQL (`ingest_media_jobs`, sql/queries/media.sql).

Jobs are created by the consumer in the statement that creates their uploads (`media_job` gives
the batch's columns); the worker claims, renews, completes and postpones them here; operators
list and requeue them. Every transition of a claimed job names its lease, so a worker whose
lease ran out (killed, or stalled past it) changes nothing when it finally finishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

import asyncpg

from handlers import chat_events
from handlers.chat_events import Payload
from ingest.config import Transport
from ingest.events import MessageEvent
from sql import QUERIES

JobStatus = Literal["pending", "stored", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = ("pending", "stored", "failed")
# Any fixed 64-bit number: every claim takes it, so claims never interleave.
CLAIM_LOCK_KEY = 0x63726D5F6D656401
# Paths of bytes already in the object store: nothing to fetch.
STORED_SCHEMES = ("file://", "s3://")
# Email's bytes arrive inside the webhook; there is no provider to fetch them from.
UNFETCHED_TRANSPORTS = frozenset({"email"})
MAX_ERROR_CHARS = 500


def media_job(event: MessageEvent, *, path: str) -> tuple[UUID, str, bool]:
    """The fetch-job columns of one new upload: its channel, transport, and whether it needs a
    job (its bytes are still at the provider)."""
    fetch = event.transport not in UNFETCHED_TRANSPORTS and not path.startswith(STORED_SCHEMES)
    return event.channel_id, event.transport, fetch


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job with its upload as the webhook left it."""

    upload_id: int
    message_id: int
    channel_id: UUID
    tenant_id: UUID
    transport: Transport
    attempts: int  # this attempt included
    lease: UUID
    queued_at: datetime
    reference: str
    declared_size: int | None
    declared_mimetype: str | None
    declared_sha256: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Job:
        return cls(
            upload_id=row["upload_id"],
            message_id=row["message_id"],
            channel_id=row["channel_id"],
            tenant_id=row["tenant_id"],
            transport=cast(Transport, row["transport"]),
            attempts=row["attempts"],
            lease=row["lease"],
            queued_at=row["queued_at"],
            reference=row["path"],
            declared_size=row["size"] or None,  # 0 is the column default: unknown
            declared_mimetype=row["mimetype"] or None,
            declared_sha256=row["hash"] or None,
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """What the upload says once its bytes are in the store."""

    path: str
    size: int
    sha256: str
    mimetype: str


async def claim(
    pool: asyncpg.Pool, limit: int, per_channel: int, lease_s: float, *, scan: int
) -> list[Job]:
    """Lease up to `limit` due jobs, never more than `per_channel` leased per channel."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(QUERIES["lock_media_claims"], CLAIM_LOCK_KEY)
        rows = await conn.fetch(QUERIES["claim_media_jobs"], limit, per_channel, scan, lease_s)
    return [Job.from_row(row) for row in rows]


async def renew(pool: asyncpg.Pool, job: Job, lease_s: float) -> bool:
    """False when the lease is no longer this worker's."""
    row = await pool.fetchrow(QUERIES["renew_media_lease"], job.upload_id, job.lease, lease_s)
    return row is not None


async def postpone(pool: asyncpg.Pool, job: Job, delay_s: float, reason: str) -> bool:
    row = await pool.fetchrow(
        QUERIES["postpone_media_job"], job.upload_id, job.lease, delay_s, _short(reason)
    )
    return row is not None


async def complete_stored(pool: asyncpg.Pool, job: Job, stored: Stored) -> Payload | None:
    """Point the upload at the object, mark the job stored and queue its chat event, in one
    transaction. None when the lease was lost (another worker owns the job now)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            QUERIES["store_media_job"],
            job.upload_id,
            job.lease,
            stored.path,
            stored.size,
            stored.sha256,
            stored.mimetype[:255],
        )
        if row is None:
            return None
        outcome: dict[str, Any] = {
            "status": "stored",
            "path": stored.path,
            "size": stored.size,
            "hash": stored.sha256,
            "mimetype": stored.mimetype[:255],
            "error": None,
        }
        event = chat_events.attachment_changed(row, outcome)
        await chat_events.enqueue(cast(asyncpg.Connection, conn), [(event, _source_id(event))])
        return event


async def complete_failed(pool: asyncpg.Pool, job: Job, reason: str) -> Payload | None:
    """Mark the job failed with its reason and queue its chat event, in one transaction."""
    reason = _short(reason)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(QUERIES["fail_media_job"], job.upload_id, job.lease, reason)
        if row is None:
            return None
        outcome: dict[str, Any] = {
            "status": "failed",
            "path": None,
            "size": None,
            "hash": None,
            "mimetype": row["mimetype"] or None,
            "error": reason,
        }
        event = chat_events.attachment_changed(row, outcome)
        await chat_events.enqueue(cast(asyncpg.Connection, conn), [(event, _source_id(event))])
        return event


def _source_id(event: Payload) -> UUID:
    # The outbox records the inbound event behind each chat event; a fetch has none, so the
    # chat event's own (deterministic) id stands in.
    return UUID(event["event_id"])


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_ERROR_CHARS else reason[: MAX_ERROR_CHARS - 1] + "…"


async def requeue(pool: asyncpg.Pool, upload_ids: Sequence[int] | None) -> int:
    """Failed jobs (all of them when `upload_ids` is None, else those named; named pending jobs
    waiting for a retry too) due now, with a new retry window. Returns how many."""
    if upload_ids is None:
        rows = await pool.fetch(QUERIES["requeue_failed_media_jobs"])
    else:
        rows = await pool.fetch(QUERIES["requeue_media_jobs"], list(upload_ids))
    return len(rows)


async def list_jobs(
    pool: asyncpg.Pool, status: JobStatus | None, limit: int
) -> list[dict[str, Any]]:
    if status is None:
        rows = await pool.fetch(QUERIES["list_media_jobs"], limit)
    else:
        rows = await pool.fetch(QUERIES["list_media_jobs_in_status"], status, limit)
    return [
        {
            "upload_id": row["upload_id"],
            "message_id": row["message_id"],
            "channel_id": str(row["channel_id"]),
            "status": row["status"],
            "attempts": row["attempts"],
            "error": row["error"],
            "path": row["path"],
        }
        for row in rows
    ]


async def queue_stats(pool: asyncpg.Pool) -> tuple[int, float]:
    """Pending jobs, and the age in seconds of the oldest one."""
    row = await pool.fetchrow(QUERIES["media_queue_stats"])
    assert row is not None  # an aggregate always has its row
    return int(row["pending"]), float(row["oldest_age_s"])


async def prune_stored(pool: asyncpg.Pool, retention_hours: int, batch: int = 5000) -> int:
    """Forget jobs stored longer than `retention_hours` ago, in short transactions of at most
    `batch` rows; returns how many."""
    pruned = 0
    while True:
        status = await pool.execute(QUERIES["prune_stored_media_jobs"], retention_hours, batch)
        deleted = int(status.split()[-1])  # "DELETE n"
        pruned += deleted
        if deleted < batch:
            return pruned
