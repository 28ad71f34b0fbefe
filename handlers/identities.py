"""Who sent each message: sender identities resolved to a client and a contact, in one
batch, creating the clients and contacts of new senders.

`ingest_identities` (tenant, contact type, value) is claimed with INSERT ... ON CONFLICT DO
NOTHING, so of two consumers racing on a new sender exactly one creates its client and contact;
the other reads the winner's rows. A new sender is attached to an existing client when the
host or another transport already knows the person (the same phone or email), and new senders
of one batch that share a phone or an email become one client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from handlers.pg import pg_text
from ingest.events import Sender
from sql import QUERIES

IdentityKey = tuple[UUID, str, str]  # tenant_id, contact_type, contact_value


class LostRace(RuntimeError):
    """A row a concurrent writer claimed vanished (its transaction rolled back): retry the batch."""


@dataclass(slots=True)
class Resolved:
    ids: dict[IdentityKey, tuple[int, int]]  # (client id, contact id) per sender
    new_clients: set[int] = field(default_factory=set)


def identity_key(sender: Sender, tenant_id: UUID) -> IdentityKey:
    return (tenant_id, sender.contact_type, sender.contact_value)


def _ordered(keys: Iterable[IdentityKey]) -> list[IdentityKey]:
    """One order for every statement of a batch, so concurrent batches lock rows alike."""
    return sorted(keys, key=lambda k: (str(k[0]), k[1], k[2]))


async def resolve_identities(
    conn: asyncpg.Connection, senders: dict[IdentityKey, Sender]
) -> Resolved:
    """(client id, contact id) of every sender, creating the clients and contacts of new
    ones; `Resolved.new_clients` are the clients this call created."""
    keys = _ordered(senders)
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
        return Resolved(found)

    claim = _ordered(unclaimed)
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
    if new_clients:
        await conn.execute(
            QUERIES["insert_clients"],
            [cid for cid, _ in new_clients],
            [key[0] for _, key in new_clients],
            [pg_text(senders[key].first_name) for _, key in new_clients],
            [pg_text(last) if (last := senders[key].last_name) else None for _, key in new_clients],
            [senders[key].phone_e164 for _, key in new_clients],
            [senders[key].email for _, key in new_clients],
        )
    if new_contacts:
        await conn.execute(
            QUERIES["insert_contacts"],
            [c[0] for c in new_contacts],
            [c[1] for c in new_contacts],
            [c[2][1] for c in new_contacts],
            [pg_text(c[2][2]) for c in new_contacts],
        )
    if unclaimed:  # a concurrent consumer claimed these first; read its committed rows
        for row in await _find_identities(conn, _ordered(unclaimed), senders):
            if row["claimed"]:
                key = (row["tenant_id"], row["contact_type"], row["contact_value"])
                found[key] = (row["client_id"], row["contact_id"])
                unclaimed.pop(key, None)
        if unclaimed:
            raise LostRace(f"{len(unclaimed)} identities claimed concurrently and not committed")
    return Resolved(found, {cid for cid, _ in new_clients})


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
        [email.lower() if (email := senders[k].email) else None for k in keys],
    )
