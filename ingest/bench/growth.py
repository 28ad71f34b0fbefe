"""Phase g: CPU per event as the tables grow.

The consumer-path database is pre-filled with SQL (growth.sql) at realistic size, one large
tenant (every other sender) among many small ones, then the consumer's own write path (the
`Ingestor` on one connection, as phase s) ingests batches of many different known senders of
the large tenant plus some new ones, at three table sizes. A statement whose cost follows the
tenant's size shows as a ratio largest / smallest well above 1.0."""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg

from handlers.ingestor import Backoff, Ingestor
from handlers.replay import StoredRecord
from ingest.bench.db_phases import no_dead_letters
from ingest.bench.measure import BenchError, PhaseResult, cpu_share, cpu_snapshot
from ingest.bench.workload import (
    BASE_DATE,
    BenchChannel,
    telegram_event,
    telegram_update,
)
from ingest.events import MessageEvent, encode_event, event_headers
from ingest.process import settle_heap
from ingest.transports.telegram import TelegramAdapter
from sql import parse_queries
from sql.db import connect, create_pool

GROWTH_SQL = parse_queries(
    resources.files("ingest.bench").joinpath("growth.sql").read_text(encoding="utf-8")
)
GROWTH_USER_ID = 6_000_000_000  # Telegram user ids of pre-filled senders (base + k)
GROWTH_NEW_USER_ID = 6_500_000_000  # ... and of the measured batches' new senders
NEW_SENDER_SHARE = 0.10  # of each measured set; the rest are known senders of the large tenant
SIZE_STEPS = (0.1, 0.5, 1.0)  # measured after pre-filling these shares of --growth-identities
_PREFILL_CHUNK = 100_000  # senders per pre-fill statement: bounded memory and WAL per statement
_TABLES = (
    "crm_clients",
    "ingest_client_names",
    "crm_client_contacts",
    "ingest_identities",
    "crm_chats",
    "crm_chat_members",
    "crm_chat_messages",
    "ingest_message_refs",
)


@dataclass(frozen=True, slots=True)
class GrowthSpec:
    identities: int  # pre-filled senders at the largest size (one message each)
    events: int  # events measured at each size
    small_tenants: int
    batch_records: int

    @property
    def known_senders(self) -> int:
        return self.events - max(1, round(self.events * NEW_SENDER_SHARE))

    def check(self) -> None:
        """Each size's known senders are all different: the smallest size must hold them."""
        if self.known_senders > sizes(self.identities)[0] // 2:
            need = self.known_senders * 2 * round(1 / SIZE_STEPS[0])
            raise BenchError(
                f"--growth-identities {self.identities} is too small for --growth-events"
                f" {self.events}: use at least {need}, or fewer events"
            )


def sizes(total: int) -> list[int]:
    return sorted({max(2, round(total * step)) for step in SIZE_STEPS})


def _measured_events(
    large: BenchChannel, known: list[int], new: range, step: int, rng: random.Random
) -> list[MessageEvent]:
    """One event per sender (all different), known senders of the large tenant first drawn at
    random from the pre-filled ones, interleaved with new senders; message ids above the
    pre-filled one so every event is a new message row."""
    adapter = TelegramAdapter()
    users = [GROWTH_USER_ID + k for k in known] + [GROWTH_NEW_USER_ID + n for n in new]
    rng.shuffle(users)
    received = datetime.fromtimestamp(BASE_DATE + 20_000_000 + step * 1_000_000, tz=UTC)
    out = []
    for i, user in enumerate(users):
        update = telegram_update(
            rng,
            update_id=950_000_000 + step * 1_000_000 + i,
            user_id=user,
            message_id=2 + step,
            date=int(received.timestamp()) + i,
            profile=("Anna", None, f"user_{user}", None),
            attachment=False,
        )
        at = received + timedelta(milliseconds=i)
        out.append(telegram_event(adapter, large, update, at, f"growth-{step}-{i}"))
    return out


async def _prefill(
    conn: asyncpg.Connection,
    first: int,
    last: int,
    large: BenchChannel,
    small: tuple[list[uuid.UUID], list[uuid.UUID]],
) -> None:
    for lo in range(first, last + 1, _PREFILL_CHUNK):
        hi = min(last, lo + _PREFILL_CHUNK - 1)
        await conn.execute(
            GROWTH_SQL["growth_prefill"],
            *(lo, hi, large.tenant_id, large.channel_id, GROWTH_USER_ID, *small, BASE_DATE),
        )
    # As autovacuum would leave tables of this size: statistics and the visibility map.
    for table in _TABLES:
        await conn.execute(f"VACUUM (ANALYZE) {table}")


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow(GROWTH_SQL["growth_counts"])
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def _buffers(conn: asyncpg.Connection, pool: asyncpg.Pool) -> dict[str, int]:
    """The database's block counters, the Ingestor's connection's own counts included: its
    pending statistics are flushed first (they would otherwise wait up to its idle interval)."""
    async with pool.acquire() as ingesting:
        await ingesting.execute("SELECT pg_stat_force_next_flush()")
    row = await conn.fetchrow(GROWTH_SQL["growth_buffers"])
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def growth(url: str, large: BenchChannel, spec: GrowthSpec, seed: int) -> PhaseResult:
    """Pre-fill, then measure at each size of `sizes(spec.identities)`; raises BenchError if a
    known sender got a second client or a message was lost."""
    spec.check()
    rng = random.Random(seed * 104_729)
    known_count = spec.known_senders
    tenants = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(spec.small_tenants)]
    channels = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in tenants]
    conn = await connect(url)
    pool = await create_pool(url, min_size=1, max_size=1)
    measured: list[dict[str, Any]] = []
    try:
        await conn.execute(GROWTH_SQL["growth_tenants"], tenants, channels)
        ingestor = Ingestor(pool, no_dead_letters, Backoff())
        filled, new_senders = 0, 0
        for step, size in enumerate(sizes(spec.identities)):
            began = time.perf_counter()
            await _prefill(conn, filled + 1, size, large, (tenants, channels))
            prefill_s = time.perf_counter() - began
            filled = size
            known = rng.sample(range(2, size + 1, 2), known_count)
            fresh = range(new_senders, new_senders + spec.events - known_count)
            new_senders += len(fresh)
            events = _measured_events(large, known, fresh, step, rng)
            records = [
                StoredRecord("growth", 0, offset, e.conversation_key.encode(), encode_event(e),
                             event_headers(e))
                for offset, e in enumerate(events)
            ]  # fmt: skip
            before_rows = await _counts(conn)
            before_blocks = await _buffers(conn, pool)
            settle_heap()
            before = cpu_snapshot()
            started = time.perf_counter()
            for start in range(0, len(records), spec.batch_records):
                await ingestor.handle(records[start : start + spec.batch_records])
            seconds = time.perf_counter() - started
            after = cpu_snapshot()
            after_blocks = await _buffers(conn, pool)
            after_rows = await _counts(conn)
            grown = {k: after_rows[k] - before_rows[k] for k in after_rows}
            want = {"identities": len(fresh), "messages": len(events), "clients": len(fresh)}
            if grown != want:
                raise BenchError(f"growth at {size:,} senders: rows grew by {grown}, not {want}")
            shares = cpu_share(before, after, seconds)
            measured.append(
                {
                    "identities": before_rows["identities"],
                    "messages": before_rows["messages"],
                    "prefill_s": round(prefill_s, 1),
                    "database_mb": round(before_blocks["bytes"] / 2**20),
                    "shared_buffers_mb": round(before_blocks["shared_buffers"] / 2**20),
                    # Blocks per event found in shared_buffers / read from outside them (the
                    # OS cache here: the reads cost PostgreSQL CPU, not disk waits).
                    "blocks_hit_per_event": round(
                        (after_blocks["blks_hit"] - before_blocks["blks_hit"]) / len(events), 1
                    ),
                    "blocks_read_per_event": round(
                        (after_blocks["blks_read"] - before_blocks["blks_read"]) / len(events), 2
                    ),
                    "events": len(events),
                    "known_senders": known_count,
                    "seconds": round(seconds, 3),
                    "cpu_us_per_event": {
                        kind: round(share * seconds / len(events) * 1e6, 1)
                        for kind, share in shares.items()
                    },
                }
            )
    finally:
        await pool.close()
        await conn.close()
    return PhaseResult(
        "g  growth (consumer SQL path)",
        sum(m["events"] for m in measured),
        sum(m["seconds"] for m in measured),
        {
            "large_tenant_share": 0.5,
            "small_tenants": spec.small_tenants,
            "batch_records": spec.batch_records,
            "sizes": measured,
            "largest_over_smallest": growth_ratio(measured),
        },
    )


def growth_ratio(measured: list[dict[str, Any]]) -> dict[str, float | None]:
    """CPU per event at the largest size over the smallest, per process kind (flat = 1.0)."""
    first, last = measured[0]["cpu_us_per_event"], measured[-1]["cpu_us_per_event"]
    return {
        kind: round(last[kind] / first[kind], 2) if first.get(kind) else None
        for kind in ("postgres", "bench")
    }
