"""Set-based writes of a batch of inbound message events, in one transaction.

A constant number of round trips per batch, whatever its size: keys are deduplicated and sorted
in Python, then each step is one `unnest(...)` statement (plus a read-back only when a
concurrent writer won a race). Business outcomes are decided by database constraints:

1. identities: `ingest_identities` (tenant, contact type, value) is claimed with
   INSERT ... ON CONFLICT DO NOTHING; the winner creates the client and contact.
2. chats: the unique (tenant_id, client_id) index keeps one chat per client.
3. members: the unique (chat, contact, transport) index; transport_meta merges only from a
   newer event than the last merged one.
4. messages: `ingest_message_refs` (channel, provider message id) dedupes; a higher version
   (a newer edit) updates the text, anything else is already present.
5. last_message_at only moves forward.

Events arrive sanitized for PostgreSQL (no NUL anywhere: `handlers.pg.without_nul` runs on
every record before it is decoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from handlers import chat_events
from handlers.chat_events import Queued
from handlers.pg import naive_utc, pg_text
from ingest.events import Attachment, MessageEvent, Sender
from sql import QUERIES

IdentityKey = tuple[UUID, str, str]  # tenant_id, contact_type, contact_value
MemberKey = tuple[int, int, str]  # chat_id, contact_id, transport
INT32_MAX = 2**31 - 1


class LostRace(RuntimeError):
    """A row a concurrent writer claimed vanished (its transaction rolled back): retry the batch."""


@dataclass(slots=True)
class BatchOutcome:
    events: int = 0
    messages_created: int = 0
    messages_edited: int = 0
    already_present: int = 0
    clients_created: int = 0
    chats_created: int = 0
    created_message_ids: list[int] = field(default_factory=list)
    # Chat events for the outbox, each with the inbound event id that caused it.
    chat_events: list[Queued] = field(default_factory=list)
    new_clients: set[int] = field(default_factory=set)
    new_chats: set[int] = field(default_factory=set)


def _identity(sender: Sender, tenant_id: UUID) -> IdentityKey:
    return (tenant_id, sender.contact_type, sender.contact_value)


def collapse(events: Iterable[MessageEvent]) -> list[MessageEvent]:
    """One event per provider message: the highest version (first seen on ties), sorted."""
    newest: dict[tuple[UUID, str], MessageEvent] = {}
    for event in events:
        key = (event.channel_id, event.external_message_id)
        kept = newest.get(key)
        if kept is None or event.version > kept.version:
            newest[key] = event
    return [newest[k] for k in sorted(newest, key=lambda k: (str(k[0]), k[1]))]


async def _resolve_identities(
    conn: asyncpg.Connection, senders: dict[IdentityKey, Sender], outcome: BatchOutcome
) -> dict[IdentityKey, tuple[int, int]]:
    keys = sorted(senders, key=lambda k: (str(k[0]), k[1], k[2]))
    found: dict[IdentityKey, tuple[int, int]] = {}
    unclaimed: dict[IdentityKey, tuple[int | None, int | None]] = {k: (None, None) for k in keys}
    for row in await _find_identities(conn, keys, senders):
        key = (row["tenant_id"], row["contact_type"], row["contact_value"])
        if row["claimed"]:
            found[key] = (row["client_id"], row["contact_id"])
            unclaimed.pop(key)
        else:  # the host's contact, or a client known by phone/email on another channel
            unclaimed[key] = (row["client_id"], row["contact_id"])
    if not unclaimed:
        return found

    claim = sorted(unclaimed, key=lambda k: (str(k[0]), k[1], k[2]))
    proposed = await _allocate_clients([k for k in claim if unclaimed[k][0] is None], senders, conn)
    claimed = await conn.fetch(
        QUERIES["claim_identities"],
        [k[0] for k in claim],
        [k[1] for k in claim],
        [k[2] for k in claim],
        [unclaimed[k][0] or proposed.get(k) for k in claim],
        [unclaimed[k][1] for k in claim],
    )
    new_clients: list[tuple[int, IdentityKey]] = []
    new_contacts: list[tuple[int, int, IdentityKey]] = []
    for row in claimed:
        key = (row["tenant_id"], row["contact_type"], row["contact_value"])
        found[key] = (row["client_id"], row["contact_id"])
        given_client, given_contact = unclaimed.pop(key)
        if given_client is None:
            named_by = next(
                (i for i, (c, _) in enumerate(new_clients) if c == row["client_id"]), None
            )
            if named_by is None:
                new_clients.append((row["client_id"], key))
            elif _fallback_name(senders[new_clients[named_by][1]]):
                new_clients[named_by] = (row["client_id"], key)  # a real name beats a number
        if given_contact is None:
            new_contacts.append((row["contact_id"], row["client_id"], key))
    outcome.new_clients.update(cid for cid, _ in new_clients)
    if new_clients:
        await conn.execute(
            QUERIES["insert_clients"],
            [cid for cid, _ in new_clients],
            [key[0] for _, key in new_clients],
            [pg_text(senders[key].first_name) for _, key in new_clients],
            [
                pg_text(senders[key].last_name) if senders[key].last_name else None
                for _, key in new_clients
            ],
            [senders[key].phone_e164 for _, key in new_clients],
            [senders[key].email for _, key in new_clients],
        )
        outcome.clients_created += len(new_clients)
    if new_contacts:
        await conn.execute(
            QUERIES["insert_contacts"],
            [c[0] for c in new_contacts],
            [c[1] for c in new_contacts],
            [c[2][1] for c in new_contacts],
            [pg_text(c[2][2]) for c in new_contacts],
        )
    if unclaimed:  # a concurrent consumer claimed these first; read its committed rows
        lost = sorted(unclaimed, key=lambda k: (str(k[0]), k[1], k[2]))
        for row in await _find_identities(conn, lost, senders):
            if row["claimed"]:
                key = (row["tenant_id"], row["contact_type"], row["contact_value"])
                found[key] = (row["client_id"], row["contact_id"])
                unclaimed.pop(key, None)
        if unclaimed:
            raise LostRace(f"{len(unclaimed)} identities claimed concurrently and not committed")
    return found


def _fallback_name(sender: Sender) -> bool:
    """Adapters name a sender by number or address when the provider gives no name (SMS)."""
    return sender.first_name in (sender.contact_value, sender.phone_e164, sender.email)


def same_person(
    keys: Sequence[IdentityKey], senders: dict[IdentityKey, Sender]
) -> list[list[IdentityKey]]:
    """Group new identities of one tenant that share a phone or an email: one person, who
    reached us on several transports in the same batch, gets one client."""
    parent = {k: k for k in keys}

    def root(key: IdentityKey) -> IdentityKey:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_seen: dict[tuple[UUID, str, str], IdentityKey] = {}
    for key in keys:
        sender = senders[key]
        marks = [("phone", sender.phone_e164), ("email", (sender.email or "").lower() or None)]
        for kind, value in marks:
            if value is None:
                continue
            mark = (key[0], kind, value)
            if mark in first_seen:
                parent[root(key)] = root(first_seen[mark])
            else:
                first_seen[mark] = key
    groups: dict[IdentityKey, list[IdentityKey]] = {}
    for key in keys:
        groups.setdefault(root(key), []).append(key)
    return list(groups.values())


async def _allocate_clients(
    keys: Sequence[IdentityKey], senders: dict[IdentityKey, Sender], conn: asyncpg.Connection
) -> dict[IdentityKey, int]:
    if not keys:
        return {}
    groups = same_person(keys, senders)
    ids = [r["id"] for r in await conn.fetch(QUERIES["allocate_client_ids"], len(groups))]
    return {key: client_id for group, client_id in zip(groups, ids, strict=True) for key in group}


async def _find_identities(
    conn: asyncpg.Connection, keys: Sequence[IdentityKey], senders: dict[IdentityKey, Sender]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        QUERIES["find_identities"],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [senders[k].phone_e164 for k in keys],
        [senders[k].email.lower() if senders[k].email else None for k in keys],
    )


async def _resolve_chats(
    conn: asyncpg.Connection, pairs: set[tuple[UUID, int]], outcome: BatchOutcome
) -> dict[tuple[UUID, int], int]:
    ordered = sorted(pairs, key=lambda p: (str(p[0]), p[1]))
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
    senders = {_identity(e.sender, e.tenant_id): e.sender for e in by_version}
    identities = await _resolve_identities(conn, senders, outcome)
    chats = await _resolve_chats(
        conn,
        {(e.tenant_id, identities[_identity(e.sender, e.tenant_id)][0]) for e in latest},
        outcome,
    )

    wanted: dict[MemberKey, tuple[UUID, int, dict[str, Any], int]] = {}
    placed: dict[tuple[UUID, str], tuple[MessageEvent, int, MemberKey]] = {}
    for event in by_version:  # newer meta merges over older
        client_id, contact_id = identities[_identity(event.sender, event.tenant_id)]
        chat_id = chats[(event.tenant_id, client_id)]
        key = (chat_id, contact_id, event.transport)
        merged = {**wanted[key][2], **event.member_meta} if key in wanted else event.member_meta
        wanted[key] = (event.tenant_id, client_id, merged, event.version)
        placed[(event.channel_id, event.external_message_id)] = (event, chat_id, key)
    members = await _resolve_members(conn, wanted)

    _announce_clients_and_chats(by_version, identities, chats, outcome)
    await _store_messages(conn, latest, placed, members, identities, outcome)
    await _advance_chats(conn, placed.values())
    return outcome


def _announce_clients_and_chats(
    by_version: Sequence[MessageEvent],
    identities: dict[IdentityKey, tuple[int, int]],
    chats: dict[tuple[UUID, int], int],
    outcome: BatchOutcome,
) -> None:
    """client.created / chat.created for what this batch created, caused by its first message."""
    if not outcome.new_clients and not outcome.new_chats:
        return  # the common case: every sender was known
    for event in sorted(by_version, key=lambda e: e.sent_at):
        client_id = identities[_identity(event.sender, event.tenant_id)][0]
        chat_id = chats[(event.tenant_id, client_id)]
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
    placed: dict[tuple[UUID, str], tuple[MessageEvent, int, MemberKey]],
    members: dict[MemberKey, UUID],
    identities: dict[IdentityKey, tuple[int, int]],
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
    edited: dict[int, MessageEvent] = {}
    attachments: list[tuple[int, UUID, str, str, str, int, str]] = []
    created: list[tuple[MessageEvent, int, int, MemberKey]] = []  # event, message, chat, member
    for row in refs:
        event, chat_id, member_key = placed[(row["channel_id"], row["external_id"])]
        message_id = row["message_id"]
        if not row["inserted"]:
            edits.append((message_id, pg_text(event.text)))
            edited[message_id] = event
            continue
        sent_at = naive_utc(event.sent_at)
        inserts.append((message_id, chat_id, members[member_key], pg_text(event.text), sent_at))
        attachments += [upload_row(message_id, event, a) for a in event.attachments]
        created.append((event, message_id, chat_id, member_key))
    if inserts:
        await conn.execute(QUERIES["insert_messages"], *_columns(inserts))
    upload_ids: list[int] = []
    if attachments:
        rows = await conn.fetch(QUERIES["insert_attachments"], *_columns(attachments))
        upload_ids = [r["upload_id"] for r in rows]
    uploads = iter(upload_ids)
    for event, message_id, chat_id, member_key in created:
        linked = [
            chat_events.attachment(
                next(uploads), a.kind, a.provider_ref, a.mime_type, a.filename, a.size_bytes
            )
            for a in event.attachments
        ]
        announcement = chat_events.message_created(
            tenant_id=event.tenant_id,
            client_id=identities[_identity(event.sender, event.tenant_id)][0],
            chat_id=chat_id,
            member_id=members[member_key],
            message_id=message_id,
            transport=event.transport,
            text=pg_text(event.text),
            sent_at=event.sent_at,
            attachments=linked,
        )
        outcome.chat_events.append((announcement, event.event_id))
    if edits:
        for row in await conn.fetch(QUERIES["update_message_texts"], *_columns(edits)):
            event = edited[row["id"]]
            chat_id = placed[(event.channel_id, event.external_message_id)][1]
            update = chat_events.message_edited(
                event.tenant_id,
                identities[_identity(event.sender, event.tenant_id)][0],
                chat_id,
                row,
                pg_text(event.text),
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


async def _advance_chats(
    conn: asyncpg.Connection, placed: Iterable[tuple[MessageEvent, int, MemberKey]]
) -> None:
    last: dict[int, datetime] = {}
    for event, chat_id, _ in placed:
        sent = naive_utc(event.sent_at)
        if chat_id not in last or last[chat_id] < sent:
            last[chat_id] = sent
    chat_ids = sorted(last)
    await conn.execute(QUERIES["advance_last_message_at"], chat_ids, [last[c] for c in chat_ids])


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]
