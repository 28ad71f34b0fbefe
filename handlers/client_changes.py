"""What a batch changes about the clients its senders resolved to: a better name, a phone
number learned by linking identities, and second identities found on another client. One
statement each per batch (when there is anything to do), never per event.

Names: crm-ingest records the name it wrote into each client it created (`ingest_client_names`).
A real name from a later event replaces a made-up one (a number, an address, a username) on any
transport of the client; a real name is replaced only by a newer one from the transport that
gave it. Nothing is written unless `crm_clients` still holds the recorded name, so a name the
host set or edited stays. Versions only move forward, so replayed events change nothing.

Conflicts: a sender whose two identities already belong to two clients is recorded once in
`ingest_identity_conflicts`, and announced, for the host to decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from uuid import UUID

import asyncpg

from handlers import chat_events
from handlers.chat_events import Queued
from handlers.identities import Conflict, IdentityKey, is_placeholder
from handlers.pg import pg_text
from ingest.events import MessageEvent
from sql import QUERIES

# (client id, chat id, event) of each message of a batch, oldest version first
Placement = tuple[int, int, MessageEvent]
NameKey = tuple[int, str]  # client id, contact type the name came from


def name_candidates(placements: Iterable[Placement]) -> dict[NameKey, Placement]:
    """Per client and transport, the newest event of the batch whose sender has a real name."""
    newest: dict[NameKey, Placement] = {}
    for placement in placements:
        client_id, _, event = placement
        if not is_placeholder(event.sender):
            newest[(client_id, event.sender.contact_type)] = placement
    return newest


async def rename_clients(conn: asyncpg.Connection, placements: Sequence[Placement]) -> list[Queued]:
    """Apply the batch's real names; a client.updated for each client renamed."""
    candidates = name_candidates(placements)
    if not candidates:
        return []
    keys = sorted(candidates)
    senders = [candidates[k][2].sender for k in keys]
    rows = await conn.fetch(
        QUERIES["rename_clients"],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [pg_text(s.first_name) for s in senders],
        [pg_text(s.last_name) if s.last_name else None for s in senders],
        [candidates[k][2].version for k in keys],
    )
    renamed: list[Queued] = []
    for row in rows:
        _, chat_id, event = candidates[(row["client_id"], row["source"])]
        renamed.append((chat_events.client_renamed(row, chat_id, event.sent_at), event.event_id))
    return renamed


async def fill_phones(
    conn: asyncpg.Connection,
    learned: Mapping[IdentityKey, tuple[int, str]],
    events: Mapping[IdentityKey, MessageEvent],
    chats: Mapping[tuple[UUID, int], int],
) -> list[Queued]:
    """A client known by a user id alone gets the phone its sender now brings, unless it has
    one; a client.updated for each. `learned` maps each such sender to (client id, phone)."""
    if not learned:
        return []
    causes = {learned[k][0]: k for k in sorted(learned, key=lambda k: (k[0].int, k[1], k[2]))}
    ids = sorted(causes)
    phones = [learned[causes[i]][1] for i in ids]
    filled: list[Queued] = []
    for row in await conn.fetch(QUERIES["fill_client_phones"], ids, phones):
        event = events[causes[row["client_id"]]]
        chat_id = chats[(row["tenant_id"], row["client_id"])]
        change = {"field": "phone_number", "old": None, "new": row["phone"]}
        update = chat_events.client_updated(
            row["tenant_id"], row["client_id"], chat_id, event.sent_at, [change],
            "phone_number", row["phone"],
        )  # fmt: skip
        filled.append((update, event.event_id))
    return filled


async def record_conflicts(
    conn: asyncpg.Connection,
    conflicts: Sequence[Conflict],
    events: Mapping[IdentityKey, MessageEvent],
    chats: Mapping[tuple[UUID, int], int],
) -> list[Queued]:
    """Record each conflict once; a client.identity_conflict for each one new to the table.
    `events` holds the newest event of each sender, `chats` the chat of each client."""
    if not conflicts:
        return []
    ordered = sorted(conflicts, key=lambda c: (c.key[0].int, c.key[1], c.key[2], c.linked_value))
    rows = await conn.fetch(
        QUERIES["record_identity_conflicts"],
        [c.key[0] for c in ordered],
        [c.key[1] for c in ordered],
        [c.key[2] for c in ordered],
        [c.linked_value for c in ordered],
        [c.client_id for c in ordered],
        [c.linked_client_id for c in ordered],
        [events[c.key].event_id for c in ordered],
    )
    recorded: list[Queued] = []
    for row in rows:
        key = (row["tenant_id"], row["contact_type"], row["contact_value"])
        event, chat_id = events[key], chats[(row["tenant_id"], row["client_id"])]
        conflict = chat_events.identity_conflict(row, chat_id, event.sent_at)
        recorded.append((conflict, event.event_id))
    return recorded
