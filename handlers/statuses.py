"""Delivery/read statuses: logged once, settled forward-only onto the message they name.

Every status is logged once (idempotent on channel, provider id, status); messages are settled
from the log. Statuses that arrived before their message wait there and apply together when it
is stored, each to its own column (sent -> sent_at, read -> read_at). Afterwards a status moves
a message only if it ranks higher and is not older: a `delivered` after `read`, or anything
older than the last applied status, changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from handlers.chat_events import Queued, status_changed
from handlers.pg import naive_utc
from ingest.events import StatusEvent
from sql import QUERIES

STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}


async def log_statuses(conn: asyncpg.Connection, statuses: Sequence[StatusEvent]) -> None:
    unique = {(s.channel_id, s.external_message_id, s.status): s for s in statuses}
    if not unique:
        return
    rows = [unique[k] for k in sorted(unique, key=lambda k: (k[0].int, k[1], k[2]))]
    await conn.execute(
        QUERIES["log_statuses"],
        [s.channel_id for s in rows],
        [s.external_message_id for s in rows],
        [s.status for s in rows],
        [STATUS_RANK[s.status] for s in rows],
        [naive_utc(s.status_at) for s in rows],
        [s.meta for s in rows],
    )


async def settle_statuses(
    conn: asyncpg.Connection, sources: dict[tuple[UUID, str], UUID]
) -> list[Queued]:
    """Apply the best logged status of each message ref in `sources` (refs without a message
    yet keep waiting); returns a message.updated chat event per message that moved, caused by
    the inbound event `sources` names for its ref."""
    keys = sorted(sources, key=lambda k: (k[0].int, k[1]))
    if not keys:
        return []
    rows = await conn.fetch(QUERIES["settle_statuses"], [k[0] for k in keys], [k[1] for k in keys])
    return [(status_changed(row), sources[(row["channel_id"], row["external_id"])]) for row in rows]
