"""Who sent each message: sender identities resolved to a client and a contact, in one
batch, creating the clients and contacts of new senders.

`ingest_identities` (tenant, contact type, value) is claimed with INSERT ... ON CONFLICT DO
NOTHING, so of two consumers racing on a new sender exactly one creates its client and contact;
the other reads the winner's rows. A new sender is attached to an existing client when the
host or another transport already knows the person (the same phone or email), and new senders
of one batch that share a phone or an email become one client.

A WhatsApp sender may carry two identities: its phone and its business-scoped user id (BSUID;
username-only users have the user id alone). The second is claimed for the client known by
either, so both reach one client; when each already belongs to a different client, nothing is
merged: the pair is returned as a `Conflict` for the host to decide.
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


@dataclass(frozen=True, slots=True)
class Conflict:
    """`key`'s messages stay with `client_id`; its other identity, `linked_value`, belongs to
    `linked_client_id`."""

    key: IdentityKey
    linked_value: str
    client_id: int
    linked_client_id: int


@dataclass(slots=True)
class Resolved:
    ids: dict[IdentityKey, tuple[int, int]]  # (client id, contact id) per sender
    new_clients: set[int] = field(default_factory=set)
    conflicts: list[Conflict] = field(default_factory=list)
    # Senders whose phone joined the client known by their user id: (client id, phone).
    phones_learned: dict[IdentityKey, tuple[int, str]] = field(default_factory=dict)


def identity_key(sender: Sender, tenant_id: UUID) -> IdentityKey:
    return (tenant_id, sender.contact_type, sender.contact_value)


def linked_key(sender: Sender, tenant_id: UUID) -> IdentityKey | None:
    """The sender's second identity (WhatsApp user id beside a phone), if it has one."""
    if sender.user_id is None or sender.user_id == sender.contact_value:
        return None
    return (tenant_id, sender.contact_type, sender.user_id)


def is_placeholder(sender: Sender) -> bool:
    """Whether the sender's name was made up: said by the adapter, or equal to an identifier
    (events from adapters older than `name_is_placeholder` name SMS senders by number)."""
    if sender.name_is_placeholder:
        return True
    name = sender.first_name.strip()
    identifiers = (sender.contact_value, sender.phone_e164, sender.email, sender.user_id)
    return not sender.last_name and name in identifiers


def _ordered(keys: Iterable[IdentityKey]) -> list[IdentityKey]:
    """One order for every statement of a batch, so concurrent batches lock rows alike. A
    UUID's integer orders as PostgreSQL orders uuids (bytewise), and as their text does, at a
    third of the cost of formatting it."""
    return sorted(keys, key=lambda k: (k[0].int, k[1], k[2]))


async def resolve_identities(
    conn: asyncpg.Connection, senders: dict[IdentityKey, Sender], versions: dict[IdentityKey, int]
) -> Resolved:
    """(client id, contact id) of every sender, creating the clients and contacts of new
    ones; `Resolved.new_clients` are the clients this call created. `versions` holds the
    provider version of each sender's event: a new client's name is recorded with it."""
    keys = _ordered(senders)
    links = {k: a for k in keys if (a := linked_key(senders[k], k[0])) is not None}
    known: dict[IdentityKey, tuple[int | None, int | None, bool]] = {}
    for row in await _find_identities(conn, _ordered({*keys, *links.values()}), senders):
        key = (row["tenant_id"], row["contact_type"], row["contact_value"])
        known[key] = (row["client_id"], row["contact_id"], row["claimed"])
    found: dict[IdentityKey, tuple[int, int]] = {}
    # Identities to claim, with the client and contact they join (None: new ones). Unknown
    # senders join no one; known but unclaimed ones are the host's contact, or a client known
    # by phone/email on another channel.
    unclaimed: dict[IdentityKey, tuple[int | None, int | None]] = {}
    for key in keys:
        client_id, contact_id, claimed = known.get(key, (None, None, False))
        if claimed and client_id is not None and contact_id is not None:
            found[key] = (client_id, contact_id)
        else:
            unclaimed[key] = (client_id, contact_id)
    linked, joins, conflicts = _link(links, known, senders, unclaimed)
    learned = {
        k: (client_id, phone)
        for k, (client_id, _) in unclaimed.items()
        if client_id is not None and k in links and known.get(k) is None
        and (phone := senders[k].phone_e164) is not None
    }  # fmt: skip
    if not unclaimed and not joins:
        return Resolved(found, conflicts=conflicts)

    new_clients: list[tuple[int, IdentityKey]] = []
    if unclaimed:
        new_clients, new_contacts = await _claim(conn, senders, unclaimed, found)
        if new_clients:
            await _insert_clients(conn, new_clients, senders, versions)
        if new_contacts:  # after their clients: the seed's contact -> client key is immediate
            await conn.execute(
                QUERIES["insert_contacts"],
                [c[0] for c in new_contacts],
                [c[1] for c in new_contacts],
                [c[2][1] for c in new_contacts],
                [pg_text(c[2][2]) for c in new_contacts],
            )
        if unclaimed:  # a concurrent consumer claimed these first; read its committed rows
            if linked.intersection(unclaimed):
                raise LostRace("a linked identity was claimed concurrently")
            for row in await _find_identities(conn, _ordered(unclaimed), senders):
                if row["claimed"]:
                    key = (row["tenant_id"], row["contact_type"], row["contact_value"])
                    found[key] = (row["client_id"], row["contact_id"])
                    unclaimed.pop(key, None)
            if unclaimed:
                raise LostRace(
                    f"{len(unclaimed)} identities claimed concurrently and not committed"
                )
    if joins:  # second identities join their sender's client and contact, now both exist
        order = _ordered(joins)
        joined = await conn.fetch(
            QUERIES["claim_identities"],
            [k[0] for k in order],
            [k[1] for k in order],
            [k[2] for k in order],
            [found[joins[k]][0] for k in order],
            [found[joins[k]][1] for k in order],
        )
        if len(joined) < len(order):
            raise LostRace("a linked identity was claimed concurrently")
    return Resolved(found, {cid for cid, _ in new_clients}, conflicts, learned)


def _link(
    links: dict[IdentityKey, IdentityKey],
    known: dict[IdentityKey, tuple[int | None, int | None, bool]],
    senders: dict[IdentityKey, Sender],
    unclaimed: dict[IdentityKey, tuple[int | None, int | None]],
) -> tuple[set[IdentityKey], dict[IdentityKey, IdentityKey], list[Conflict]]:
    """Decide each sender's second identity: the one known first names the client of both.

    Updates `unclaimed` (a new identity joins the client its partner is known by, and a host
    contact of the second identity is claimed as it is), and returns the identities whose
    claim must not be lost to a concurrent consumer (the batch is retried then), the second
    identities to claim with their sender's client and contact, and the conflicts."""
    linked: set[IdentityKey] = set()
    joins: dict[IdentityKey, IdentityKey] = {}  # second identity -> the sender it joins
    conflicts: list[Conflict] = []
    for key, other in links.items():
        client_id, other_client_id = known.get(key, (None,))[0], known.get(other, (None,))[0]
        if client_id is not None and other_client_id is not None and client_id != other_client_id:
            conflicts.append(Conflict(key, other[2], client_id, other_client_id))
            continue
        if client_id is None and other_client_id is not None and key in unclaimed:
            unclaimed[key] = (other_client_id, None)  # joins the client of its user id
        linked.add(key)
        if other in senders:  # also a sender of this batch: claimed as one, same person
            if other_client_id is None and client_id is not None and other in unclaimed:
                unclaimed[other] = (client_id, None)
            linked.add(other)
        elif other not in known:
            joins[other] = key
        elif not known[other][2]:  # the host's contact of the user id, on the same client
            unclaimed[other] = known[other][:2]
            linked.add(other)
    return linked, joins, conflicts


async def _claim(
    conn: asyncpg.Connection,
    senders: dict[IdentityKey, Sender],
    unclaimed: dict[IdentityKey, tuple[int | None, int | None]],
    found: dict[IdentityKey, tuple[int, int]],
) -> tuple[list[tuple[int, IdentityKey]], list[tuple[int, int, IdentityKey]]]:
    """Claim `unclaimed` identities (won claims move to `found`; lost ones stay). Returns the
    new clients to create, each with the key naming it, and the new contacts."""
    claim = _ordered(unclaimed)
    new = [k for k in claim if unclaimed[k][0] is None]
    proposed = await _allocate_clients(new, senders, conn)
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
            elif is_placeholder(senders[new_clients[named_by][1]]):
                new_clients[named_by] = (row["client_id"], key)  # a real name beats a number
        if given_contact is None:
            new_contacts.append((row["contact_id"], row["client_id"], key))
    return new_clients, new_contacts


async def _insert_clients(
    conn: asyncpg.Connection,
    new_clients: list[tuple[int, IdentityKey]],
    senders: dict[IdentityKey, Sender],
    versions: dict[IdentityKey, int],
) -> None:
    """Create the clients, and record the name crm-ingest gave each (ingest_client_names)."""
    named = [(cid, senders[key], key) for cid, key in new_clients]
    await conn.execute(
        QUERIES["insert_clients"],
        [cid for cid, _, _ in named],
        [key[0] for _, _, key in named],
        [pg_text(s.first_name) for _, s, _ in named],
        [pg_text(s.last_name) if s.last_name else None for _, s, _ in named],
        [s.phone_e164 for _, s, _ in named],
        [s.email for _, s, _ in named],
        [is_placeholder(s) for _, s, _ in named],
        [key[1] for _, _, key in named],
        [versions[key] for _, _, key in named],
    )


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
        marks = [
            ("phone", sender.phone_e164),
            ("email", (sender.email or "").lower() or None),
            (f"{sender.contact_type}:user_id", sender.user_id),
        ]
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
    """Known identities among `keys`; a second identity (not a sender's own key) is matched
    only as itself, never by phone or email."""
    found = [senders.get(k) for k in keys]
    return await conn.fetch(
        QUERIES["find_identities"],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [s.phone_e164 if s else None for s in found],
        [s.email.lower() if s and s.email else None for s in found],
    )
