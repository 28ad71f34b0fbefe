"""Set-based writes of a batch of inbound message events, in one transaction.

A constant number of round trips per batch, whatever its size: keys are deduplicated and sorted
in Python, then each step is one `unnest(...)` statement (plus a read-back only when a
concurrent writer won a race). Business outcomes are decided by database constraints:

1. identities (`handlers.identities`): `ingest_identities` (tenant, contact type, value) is
   claimed with INSERT ... ON CONFLICT DO NOTHING; the winner creates the client and contact.
2. chats: the unique (tenant_id, client_id) index keeps one chat per client.
3. members: the unique (chat, contact, transport) index; transport_meta merges only from a
   newer event than the last merged one.
4. messages: `ingest_message_refs` (channel, provider message id) dedupes; a higher version
   (a newer edit) updates the text, anything else is already present.
5. last_message_at only moves forward.
6. names and identity conflicts (`handlers.client_changes`): a real name replaces the one
   crm-ingest gave a client unless the host changed it; two clients of one sender are recorded.

Events arrive sanitized for PostgreSQL (no NUL anywhere: `handlers.pg.without_nul` runs on
every record before it is decoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from handlers import chat_events
from handlers.chat_events import Queued
from handlers.client_changes import fill_phones, record_conflicts, rename_clients
from handlers.identities import LostRace, identity_key, resolve_identities
from handlers.media.jobs import media_job
from handlers.pg import naive_utc, pg_text
from ingest.events import Attachment, MessageEvent
from sql import QUERIES

MemberKey = tuple[int, int, str]  # chat_id, contact_id, transport
INT32_MAX = 2**31 - 1


class Placed(NamedTuple):
    """Where a message of the batch belongs, resolved once for every step that needs it."""

    event: MessageEvent
    client_id: int
    chat_id: int
    member: MemberKey


@dataclass(slots=True)
class BatchOutcome:
    events: int = 0
    messages_created: int = 0
    messages_edited: int = 0
    already_present: int = 0
    clients_created: int = 0
    chats_created: int = 0
    created_message_ids: list[int] = field(default_factory=list)
    media_jobs: int = 0  # fetch jobs created: the media worker can claim them now
    # Chat events for the outbox, each with the inbound event id that caused it.
    chat_events: list[Queued] = field(default_factory=list)
    new_clients: set[int] = field(default_factory=set)
    new_chats: set[int] = field(default_factory=set)


def collapse(events: Iterable[MessageEvent]) -> list[MessageEvent]:
    """One event per provider message: the highest version (first seen on ties), sorted."""
    newest: dict[tuple[UUID, str], MessageEvent] = {}
    for event in events:
        key = (event.channel_id, event.external_message_id)
        kept = newest.get(key)
        if kept is None or event.version > kept.version:
            newest[key] = event
    return [newest[k] for k in sorted(newest, key=lambda k: (k[0].int, k[1]))]


async def _resolve_chats(
    conn: asyncpg.Connection, pairs: set[tuple[UUID, int]], outcome: BatchOutcome
) -> dict[tuple[UUID, int], int]:
    ordered = sorted(pairs, key=lambda p: (p[0].int, p[1]))
    tenants, clients = [p[0] for p in ordered], [p[1] for p in ordered]
    chats = {
        (r["tenant_id"], r["client_id"]): r["id"]
        for r in await conn.fetch(QUERIES["find_chats"], tenants, clients)
    }
    missing = [p for p in ordered if p not in chats]
    if not missing:
        return chats
    rows = await conn.fetch(
        QUERIES["insert_chats"], [p[0] for p in missing], [p[1] for p in missing]
    )
    outcome.chats_created += len(rows)
    outcome.new_chats.update(r["id"] for r in rows)
    chats.update({(r["tenant_id"], r["client_id"]): r["id"] for r in rows})
    missing = [p for p in missing if p not in chats]
    if missing:
        rows = await conn.fetch(
            QUERIES["find_chats"], [p[0] for p in missing], [p[1] for p in missing]
        )
        chats.update({(r["tenant_id"], r["client_id"]): r["id"] for r in rows})
        if len(chats) < len(ordered):
            raise LostRace("chat created concurrently and not committed")
    return chats


async def _resolve_members(
    conn: asyncpg.Connection, wanted: dict[MemberKey, tuple[UUID, int, dict[str, Any], int]]
) -> dict[MemberKey, UUID]:
    keys = sorted(wanted)
    rows = await conn.fetch(
        QUERIES["upsert_members"],
        [wanted[k][0] for k in keys],
        [k[0] for k in keys],
        [wanted[k][1] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [wanted[k][2] for k in keys],
        [wanted[k][3] for k in keys],
    )
    members = {(r["chat_id"], r["client_contact_id"], r["transport"]): r["id"] for r in rows}
    missing = [k for k in keys if k not in members]
    if missing:
        rows = await conn.fetch(
            QUERIES["find_members"],
            [k[0] for k in missing],
            [k[1] for k in missing],
            [k[2] for k in missing],
        )
        members.update(
            {(r["chat_id"], r["client_contact_id"], r["transport"]): r["id"] for r in rows}
        )
        if len(members) < len(keys):
            raise LostRace("member created concurrently and not committed")
    return members


async def write_messages(conn: asyncpg.Connection, events: Sequence[MessageEvent]) -> BatchOutcome:
    """Apply message events in the caller's transaction; idempotent for any redelivery."""
    outcome = BatchOutcome(events=len(events))
    latest = collapse(events)
    if not latest:
        return outcome

    by_version = sorted(latest, key=lambda e: e.version)
    # The newest sender details win for new clients.
    newest = {identity_key(e.sender, e.tenant_id): e for e in by_version}
    resolved = await resolve_identities(
        conn, {k: e.sender for k, e in newest.items()}, {k: e.version for k, e in newest.items()}
    )
    identities = resolved.ids
    outcome.new_clients = resolved.new_clients
    outcome.clients_created = len(resolved.new_clients)
    chats = await _resolve_chats(
        conn,
        {(e.tenant_id, identities[identity_key(e.sender, e.tenant_id)][0]) for e in latest},
        outcome,
    )

    wanted: dict[MemberKey, tuple[UUID, int, dict[str, Any], int]] = {}
    placed: dict[tuple[UUID, str], Placed] = {}
    for event in by_version:  # newer meta merges over older
        client_id, contact_id = identities[identity_key(event.sender, event.tenant_id)]
        chat_id = chats[(event.tenant_id, client_id)]
        key = (chat_id, contact_id, event.transport)
        merged = {**wanted[key][2], **event.member_meta} if key in wanted else event.member_meta
        wanted[key] = (event.tenant_id, client_id, merged, event.version)
        placed[(event.channel_id, event.external_message_id)] = Placed(
            event, client_id, chat_id, key
        )
    members = await _resolve_members(conn, wanted)

    _announce_clients_and_chats(placed.values(), outcome)
    await _store_messages(conn, latest, placed, members, outcome)
    placements = [(p.client_id, p.chat_id, p.event) for p in placed.values()]
    outcome.chat_events += await rename_clients(conn, placements)
    outcome.chat_events += await fill_phones(conn, resolved.phones_learned, newest, chats)
    outcome.chat_events += await record_conflicts(conn, resolved.conflicts, newest, chats)
    await _advance_chats(conn, placed.values())
    return outcome


def _announce_clients_and_chats(placed: Iterable[Placed], outcome: BatchOutcome) -> None:
    """client.created / chat.created for what this batch created, caused by its first message."""
    if not outcome.new_clients and not outcome.new_chats:
        return  # the common case: every sender was known
    for event, client_id, chat_id, _ in sorted(placed, key=lambda p: p.event.sent_at):
        if client_id in outcome.new_clients:
            outcome.new_clients.discard(client_id)
            sender = event.sender
            created = chat_events.client_created(
                event.tenant_id,
                client_id,
                chat_id,
                event.sent_at,
                first_name=sender.first_name,
                last_name=sender.last_name,
                phone_number=sender.phone_e164,
                email=sender.email,
            )
            outcome.chat_events.append((created, event.event_id))
        if chat_id in outcome.new_chats:
            outcome.new_chats.discard(chat_id)
            opened = chat_events.chat_created(event.tenant_id, client_id, chat_id, event.sent_at)
            outcome.chat_events.append((opened, event.event_id))


async def _store_messages(
    conn: asyncpg.Connection,
    latest: Sequence[MessageEvent],
    placed: dict[tuple[UUID, str], Placed],
    members: dict[MemberKey, UUID],
    outcome: BatchOutcome,
) -> None:
    refs = await conn.fetch(
        QUERIES["upsert_message_refs"],
        [e.channel_id for e in latest],
        [e.external_message_id for e in latest],
        [e.version for e in latest],
        [e.message_meta for e in latest],
    )
    inserts: list[tuple[int, int, UUID, str, datetime]] = []
    edits: list[tuple[int, str]] = []
    edited: dict[int, tuple[Placed, str]] = {}  # message id -> its place, its new text
    attachments: list[tuple[int, UUID, str, str, str, int, str, UUID, str, bool]] = []
    created: list[tuple[Placed, int, str]] = []  # place, message id, text
    for row in refs:
        place = placed[(row["channel_id"], row["external_id"])]
        event, message_id, text = place.event, row["message_id"], pg_text(place.event.text)
        if not row["inserted"]:
            edits.append((message_id, text))
            edited[message_id] = (place, text)
            continue
        sent_at = naive_utc(event.sent_at)
        inserts.append((message_id, place.chat_id, members[place.member], text, sent_at))
        for attachment in event.attachments:
            upload = upload_row(message_id, event, attachment)
            attachments.append((*upload, *media_job(event, path=upload[3])))
        created.append((place, message_id, text))
    if inserts:
        await conn.execute(QUERIES["insert_messages"], *_columns(inserts))
    upload_ids: list[int] = []
    if attachments:
        rows = await conn.fetch(QUERIES["insert_attachments"], *_columns(attachments))
        upload_ids = [r["upload_id"] for r in rows]
        outcome.media_jobs = sum(1 for row in attachments if row[-1])  # needs_fetch
    uploads = iter(upload_ids)
    for place, message_id, text in created:
        event = place.event
        linked = [
            chat_events.attachment(
                next(uploads), a.kind, a.provider_ref, a.mime_type, a.filename, a.size_bytes
            )
            for a in event.attachments
        ]
        announcement = chat_events.message_created(
            tenant_id=event.tenant_id,
            client_id=place.client_id,
            chat_id=place.chat_id,
            member_id=members[place.member],
            message_id=message_id,
            transport=event.transport,
            text=text,
            sent_at=event.sent_at,
            attachments=linked,
        )
        outcome.chat_events.append((announcement, event.event_id))
    if edits:
        for row in await conn.fetch(QUERIES["update_message_texts"], *_columns(edits)):
            place, text = edited[row["id"]]
            event = place.event
            update = chat_events.message_edited(
                event.tenant_id,
                place.client_id,
                place.chat_id,
                row,
                text,
                event.version,
                event.edited_at or event.sent_at,
            )
            outcome.chat_events.append((update, event.event_id))
    outcome.messages_created = len(inserts)
    outcome.messages_edited = len(edits)
    outcome.already_present = len(latest) - len(refs)
    outcome.created_message_ids = [i[0] for i in inserts]


def upload_row(
    message_id: int, event: MessageEvent, attachment: Attachment
) -> tuple[int, UUID, str, str, str, int, str]:
    """A core_uploads row for provider-hosted bytes: `path` is the provider reference, which a
    fetcher can later replace with the stored file's location."""
    path = attachment.provider_ref
    if "://" not in path and not path.startswith(f"{event.transport}:"):
        path = f"{event.transport}:{path}"
    return (
        message_id,
        event.tenant_id,
        pg_text(str(attachment.meta.get("sha256") or "")[:255]),
        pg_text(path),
        pg_text((attachment.filename or attachment.kind)[:255]),
        min(attachment.size_bytes or 0, INT32_MAX),
        pg_text((attachment.mime_type or "")[:255]),
    )


async def _advance_chats(conn: asyncpg.Connection, placed: Iterable[Placed]) -> None:
    last: dict[int, datetime] = {}
    for event, _, chat_id, _ in placed:
        sent = naive_utc(event.sent_at)
        if chat_id not in last or last[chat_id] < sent:
            last[chat_id] = sent
    chat_ids = sorted(last)
    await conn.execute(QUERIES["advance_last_message_at"], chat_ids, [last[c] for c in chat_ids])


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]
