"""Dead letters: records that can never succeed as they are.

Each is kept in `ingest_dead_letters` (what `crm-ingest dlq list|replay` reads) and published to
the dead-letter topic with headers naming its source and the error. Both happen before the
batch's offsets are committed, so a crash in between re-processes and re-records the same
source record (one row per topic/partition/offset).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from handlers.ingestor import Record
from sql import QUERIES

PublishDeadLetter = Callable[[bytes, bytes | None, dict[str, str]], Awaitable[Any]]
_KEPT_HEADERS = ("event-id", "event-type", "correlation-id", "schema-version")


def dead_letter_headers(record: Record, exc: BaseException) -> dict[str, str]:
    kept = {
        name: value.decode("utf-8", "replace")
        for name, value in record.headers
        if name in _KEPT_HEADERS
    }
    return {
        **kept,
        "source-topic": record.topic,
        "source-partition": str(record.partition),
        "source-offset": str(record.offset),
        "error-class": type(exc).__name__,
        "error-message": str(exc)[:1000],
    }


def _event_id(headers: dict[str, str]) -> uuid.UUID | None:
    try:
        return uuid.UUID(headers["event-id"])
    except (KeyError, ValueError):
        return None


class DeadLetterSink:
    def __init__(self, pool: asyncpg.Pool, publish: PublishDeadLetter) -> None:
        self._pool = pool
        self._publish = publish

    async def __call__(self, record: Record, exc: BaseException) -> None:
        headers = dead_letter_headers(record, exc)
        async with self._pool.acquire() as conn:
            await conn.fetchval(
                QUERIES["record_dead_letter"],
                record.topic,
                record.partition,
                record.offset,
                _event_id(headers),
                record.key,
                record.value or b"",
                json.loads(json.dumps(headers)),
                headers["error-class"],
                headers["error-message"],
            )
        await self._publish(record.value or b"", record.key, headers)
