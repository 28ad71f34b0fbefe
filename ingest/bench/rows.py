"""The rows a correct ingestion of the workload leaves behind: built in full for the COPY of
phase b, and checked after every phase that writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from handlers.identities import is_placeholder
from handlers.media.jobs import media_job
from handlers.pg import naive_utc, pg_text
from handlers.store import upload_row
from ingest.bench.measure import BenchError
from ingest.bench.services import count_rows
from ingest.bench.workload import Expected, Workload
from ingest.events import MessageEvent, make_chat_event_id

OUTBOX = "ingest_outbox"
COLUMNS = {  # what the COPY of phase b writes
    "crm_clients": "id tenant_id first_name last_name phone_number email",
    "ingest_client_names": "client_id first_name last_name placeholder source version",
    "crm_client_contacts": "id client_id contact_type contact_value",
    "ingest_identities": "tenant_id contact_type contact_value client_id contact_id meta_version",
    "crm_chats": "id tenant_id client_id last_message_at",
    "crm_chat_members": "id tenant_id chat_id client_id client_contact_id transport transport_meta",
    "crm_chat_messages": "id chat_id sender_id message sent_at",
    "ingest_message_refs": "channel_id external_id message_id version",
    "core_uploads": "id tenant_id hash path name size mimetype",
    "crm_chat_message_attachments": "id message_id upload_id",
    "ingest_media_jobs": "upload_id message_id channel_id tenant_id transport",
    OUTBOX: "seq events source_event_ids published_at",
}


async def verify_rows(
    conn: asyncpg.Connection, workload: Workload, expected: Expected, phase: str
) -> dict[str, int]:
    """Every predicted row exactly once: table counts, message <-> ref <-> attachment links and
    each chat's last_message_at. Raises BenchError naming what differs."""
    wanted = expected.rows()
    actual = await count_rows(conn, list(wanted))
    problems = [f"{t}: {actual[t]} rows, expected {n}" for t, n in wanted.items() if actual[t] != n]
    linked = await conn.fetchval(
        "SELECT count(*) FROM ingest_message_refs r JOIN crm_chat_messages m ON m.id = r.message_id"
    )
    if linked != expected.events:
        problems.append(f"{linked} refs joined to messages, expected {expected.events}")
    attached = await conn.fetchval(
        "SELECT count(*) FROM crm_chat_message_attachments a"
        " JOIN core_uploads u ON u.id = a.upload_id JOIN crm_chat_messages m ON m.id = a.message_id"
    )
    if attached != expected.attachments:
        problems.append(f"{attached} linked attachments, expected {expected.attachments}")
    last = last_message_at(workload, expected.deliveries)
    values = sorted(last)
    right = await conn.fetchval(
        """SELECT count(*) FROM unnest($1::text[], $2::timestamp[]) AS k(value, at)
           JOIN ingest_identities i ON i.contact_type = 'telegram' AND i.contact_value = k.value
           JOIN crm_chats c ON c.client_id = i.client_id AND c.tenant_id = i.tenant_id
           WHERE c.last_message_at = k.at""",
        values,
        [last[v] for v in values],
    )
    if right != len(values):
        problems.append(f"{len(values) - right} chats with a wrong last_message_at")
    if problems:
        raise BenchError(f"{phase}: rows do not match the workload: " + "; ".join(problems))
    return actual


def last_message_at(workload: Workload, deliveries: int) -> dict[str, datetime]:
    last: dict[str, datetime] = {}
    for d in workload.deliveries[:deliveries]:
        event = workload.events[d.event]
        at = naive_utc(event.sent_at)
        value = event.sender.contact_value
        if value not in last or last[value] < at:
            last[value] = at
    return last


def final_rows(
    workload: Workload, *, outbox: bool, transactions: int = 1
) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """The rows a correct ingestion of the whole workload ends with, ids assigned in order;
    the chat events split over as many outbox rows as the consumer has `transactions`."""
    senders: dict[int, list[MessageEvent]] = {}
    for i, event in enumerate(workload.events):
        senders.setdefault(workload.sender_of[i], []).append(event)
    clients, names, contacts, identities, chats, members = [], [], [], [], [], []
    member_of: dict[int, uuid.UUID] = {}
    for sender, events in senders.items():
        newest = max(events, key=lambda e: e.version)
        cid = sender + 1
        tenant = workload.channels[workload.sender_tenant[sender]].tenant_id
        s = newest.sender
        clients.append((cid, tenant, s.first_name, s.last_name, s.phone_e164, s.email))
        placeholder = is_placeholder(s)
        names.append((cid, s.first_name, s.last_name, placeholder, s.contact_type, newest.version))
        contacts.append((cid, cid, s.contact_type, s.contact_value))
        identities.append((tenant, s.contact_type, s.contact_value, cid, cid, newest.version))
        chats.append((cid, tenant, cid, max(naive_utc(e.sent_at) for e in events)))
        meta: dict[str, Any] = {}
        for e in sorted(events, key=lambda e: e.version):
            meta.update(e.member_meta)
        member_of[sender] = uuid.uuid5(uuid.NAMESPACE_OID, f"bench-member-{sender}")
        members.append((member_of[sender], tenant, cid, cid, cid, "telegram", meta))
    uploads: list[tuple[Any, ...]] = []
    messages, refs, links, jobs, events_out = [], [], [], [], []
    for i, e in enumerate(workload.events):
        sender = workload.sender_of[i]
        mid = i + 1
        messages.append((mid, sender + 1, member_of[sender], pg_text(e.text), naive_utc(e.sent_at)))
        refs.append((e.channel_id, e.external_message_id, mid, e.version))
        for a in e.attachments:
            upload = len(uploads) + 1
            row = upload_row(mid, e, a)
            uploads.append((upload, *row[1:]))
            links.append((upload, mid, upload))
            channel, transport, fetch = media_job(e, path=row[3])
            if fetch:
                jobs.append((upload, mid, channel, e.tenant_id, transport))
        if outbox:
            events_out.append(_outbox_row(e, "message.created", sender, mid, member_of[sender]))
    if outbox:
        for sender, events in senders.items():
            first = min(events, key=lambda e: e.version)
            for kind in ("client.created", "chat.created"):
                events_out.append(_outbox_row(first, kind, sender, None, None))
    data: dict[str, list[tuple[Any, ...]]] = {
        "crm_clients": clients,
        "ingest_client_names": names,
        "crm_client_contacts": contacts,
        "ingest_identities": identities,
        "crm_chats": chats,
        "crm_chat_members": members,
        "crm_chat_messages": messages,
        "ingest_message_refs": refs,
        "core_uploads": uploads,
        "crm_chat_message_attachments": links,
        "ingest_media_jobs": jobs,
    }
    if outbox:
        per_row = -(-len(events_out) // max(1, transactions))
        published = naive_utc(datetime.now(UTC))
        data[OUTBOX] = [
            (0, [p for p, _ in chunk], [source for _, source in chunk], published)
            for chunk in (events_out[i : i + per_row] for i in range(0, len(events_out), per_row))
        ]
    return {table: (COLUMNS[table].split(), records) for table, records in data.items()}


def _outbox_row(
    e: MessageEvent, kind: str, sender: int, message_id: int | None, member: uuid.UUID | None
) -> tuple[dict[str, Any], uuid.UUID]:
    """A chat event shaped like the service's (close in size and keys), with its cause."""
    client = sender + 1
    payload: dict[str, Any] = {
        "schema_version": 1,
        "event_id": make_chat_event_id(kind, message_id or client),
        "tenant_id": str(e.tenant_id),
        "client_id": client,
        "chat_id": client,
        "occurred_at": e.sent_at.isoformat(),
        "event_type": kind,
    }
    if kind == "message.created":
        payload |= {
            "member_id": str(member),
            "message_id": message_id,
            "transport": e.transport,
            "text": e.text,
            "sent_at": e.sent_at.isoformat(),
            "attachments": [a.model_dump(mode="json") for a in e.attachments],
        }
    elif kind == "client.created":
        payload |= {"first_name": e.sender.first_name, "last_name": e.sender.last_name}
    return payload, e.event_id
