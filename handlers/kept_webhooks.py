"""Kept webhooks: the gateway's raw webhook records on the dead-letter topic -> dead letters.

The gateway publishes what it could not turn into events (`ingest.events.RawWebhook`) to the
dead-letter topic; this records each in `ingest_dead_letters`, where `crm-ingest dlq list`
shows it and `dlq replay` parses it again. The topic also carries the consumer's own dead
letters, already recorded by `DeadLetterSink`: only records whose `event-type` header says
`webhook.raw` are taken. One set-based statement per batch; a record seen twice (redelivery)
or a webhook kept twice (a provider's retry after a 503) stays one dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import ValidationError

from handlers.ingestor import Record
from handlers.pg import without_nul
from ingest.events import RAW_WEBHOOK, decode_raw_webhook
from sql import QUERIES

_KEPT_HEADERS = ("event-id", "event-type", "correlation-id", "schema-version", "reason-kind")


def is_kept_webhook(record: Record) -> bool:
    return any(n == "event-type" and v == RAW_WEBHOOK.encode() for n, v in record.headers)


async def record_kept_webhooks(pool: asyncpg.Pool, records: Sequence[Record]) -> int:
    """Keep the raw webhook records of `records`; returns how many there were."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for record in records:
        if not is_kept_webhook(record):
            continue
        value = record.value or b""
        headers = {n: v.decode("utf-8", "replace") for n, v in record.headers if n in _KEPT_HEADERS}
        headers |= {"source-topic": record.topic, "source-partition": str(record.partition)}
        facts: tuple[Any, ...]
        try:
            kept = decode_raw_webhook(without_nul(value))
            facts = (kept.record_id, kept.reason, kept.channel_id, kept.transport, kept.reason_kind)
        except ValidationError:
            # Labelled as one but not one: still kept, so nobody loses sight of it.
            facts = (None, "not a valid raw webhook record", None, None, "malformed")
        row = (record.partition, record.offset, facts[0], record.key, value, json.dumps(headers))
        for column, item in zip(columns, (*row, *facts[1:]), strict=True):
            column.append(item)
    if columns[0]:
        await pool.execute(QUERIES["record_kept_webhooks"], records[0].topic, *columns)
    return len(columns[0])
