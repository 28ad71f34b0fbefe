"""The per-tenant rows the pipeline tests assert on, and waiting for the consumer to write them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, NamedTuple

import asyncpg

from tests.integration.pipeline import TenantChannel
from tests.support import eventually

Rows = dict[str, list[asyncpg.Record]]
CRM_TABLES = (
    "crm_clients",
    "crm_client_contacts",
    "crm_chats",
    "crm_chat_members",
    "crm_chat_messages",
    "crm_chat_message_attachments",
    "crm_message_templates",
    "core_uploads",
)


async def table_hashes(pool: asyncpg.Pool, tables: tuple[str, ...] = CRM_TABLES) -> dict[str, str]:
    """A digest of every row of each table (a whole database's, not one tenant's)."""
    return {
        table: await pool.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        )
        for table in tables
    }


async def tenant_rows(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> Rows:
    """Every row the pipeline writes for one tenant, in a stable order, read from one snapshot
    (separate READ COMMITTED reads could see a message committed after its empty client list)."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        return {
            "clients": await conn.fetch(
                "SELECT * FROM crm_clients WHERE tenant_id = $1 ORDER BY id", tenant_id
            ),
            "contacts": await conn.fetch(
                """SELECT cc.* FROM crm_client_contacts cc JOIN crm_clients c ON c.id = cc.client_id
                   WHERE c.tenant_id = $1 ORDER BY cc.id""",
                tenant_id,
            ),
            "chats": await conn.fetch(
                "SELECT * FROM crm_chats WHERE tenant_id = $1 ORDER BY id", tenant_id
            ),
            "members": await conn.fetch(
                "SELECT * FROM crm_chat_members WHERE tenant_id = $1 ORDER BY created_at, id",
                tenant_id,
            ),
            "messages": await conn.fetch(
                """SELECT m.* FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
                   WHERE c.tenant_id = $1 ORDER BY m.sent_at, m.id""",
                tenant_id,
            ),
            "attachments": await conn.fetch(
                """SELECT a.message_id, a.upload_id, u.tenant_id, u.hash, u.path, u.name, u.size,
                          u.mimetype
                   FROM crm_chat_message_attachments a
                   JOIN core_uploads u ON u.id = a.upload_id
                   JOIN crm_chat_messages m ON m.id = a.message_id
                   JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1
                   ORDER BY a.id""",
                tenant_id,
            ),
        }


async def tenant_counts(pool: asyncpg.Pool, tenant: TenantChannel) -> dict[str, int]:
    """Row counts of every crm_* table, core_uploads and the ingest bookkeeping, for one tenant
    (crm_client_contacts and crm_chat_message_attachments have no tenant column: joined)."""
    row = await pool.fetchrow(
        """SELECT
             (SELECT count(*) FROM crm_clients WHERE tenant_id = $1) AS crm_clients,
             (SELECT count(*) FROM crm_client_contacts cc JOIN crm_clients c ON c.id = cc.client_id
               WHERE c.tenant_id = $1) AS crm_client_contacts,
             (SELECT count(*) FROM crm_chats WHERE tenant_id = $1) AS crm_chats,
             (SELECT count(*) FROM crm_chat_members WHERE tenant_id = $1) AS crm_chat_members,
             (SELECT count(*) FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
               WHERE c.tenant_id = $1) AS crm_chat_messages,
             (SELECT count(*) FROM crm_chat_message_attachments a
               JOIN crm_chat_messages m ON m.id = a.message_id
               JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1)
               AS crm_chat_message_attachments,
             (SELECT count(*) FROM crm_message_templates WHERE tenant_id = $1)
               AS crm_message_templates,
             (SELECT count(*) FROM core_uploads WHERE tenant_id = $1) AS core_uploads,
             (SELECT count(*) FROM ingest_message_refs WHERE channel_id = $2)
               AS ingest_message_refs,
             (SELECT count(*) FROM ingest_message_statuses WHERE channel_id = $2)
               AS ingest_message_statuses""",
        tenant.tenant_id,
        tenant.channel_id,
    )
    return dict(row)


async def message_state(pool: asyncpg.Pool, channel: TenantChannel, external_id: str) -> Any:
    """The stored message of a provider id with its settled status (None when not stored)."""
    return await pool.fetchrow(
        """SELECT m.id, m.message, m.sent_at, m.read_at, r.status_rank, r.status_at
           FROM ingest_message_refs r JOIN crm_chat_messages m ON m.id = r.message_id
           WHERE r.channel_id = $1 AND r.external_id = $2""",
        channel.channel_id,
        external_id,
    )


async def external_ids(pool: asyncpg.Pool, channel: TenantChannel) -> list[str]:
    """The provider ids of the channel's stored messages, sorted."""
    rows = await pool.fetch(
        "SELECT external_id FROM ingest_message_refs WHERE channel_id = $1 ORDER BY external_id",
        channel.channel_id,
    )
    return [r["external_id"] for r in rows]


async def message_meta(pool: asyncpg.Pool, message_id: int) -> Any:
    """The provider-side meta stored beside a message's provider id."""
    return await pool.fetchval(
        "SELECT meta FROM ingest_message_refs WHERE message_id = $1", message_id
    )


async def logged_statuses(pool: asyncpg.Pool, channel: TenantChannel) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        """SELECT external_id, status FROM ingest_message_statuses WHERE channel_id = $1
           ORDER BY external_id, rank""",
        channel.channel_id,
    )
    return [(r["external_id"], r["status"]) for r in rows]


def _tenant_of(owner: TenantChannel | uuid.UUID) -> uuid.UUID:
    return owner.tenant_id if isinstance(owner, TenantChannel) else owner


async def wait_messages(pool: asyncpg.Pool, owner: TenantChannel | uuid.UUID, count: int) -> Rows:
    """A tenant's rows once it has at least `count` messages (or as they are at the timeout)."""
    tenant_id = _tenant_of(owner)
    return await eventually(
        lambda: tenant_rows(pool, tenant_id), lambda rows: len(rows["messages"]) >= count
    )


async def settled_rows(
    pool: asyncpg.Pool, owner: TenantChannel | uuid.UUID, count: int, settle_s: float = 0.3
) -> Rows:
    """A tenant's rows once `count` messages are stored and `settle_s` more have passed: the
    last of them follows any redelivery on its partition, so a wrongly stored duplicate would
    show up by then."""
    await wait_messages(pool, owner, count)
    await asyncio.sleep(settle_s)
    return await tenant_rows(pool, _tenant_of(owner))


async def wait_first_text_change(pool: asyncpg.Pool, channel: TenantChannel, old: str) -> Rows:
    """A tenant's rows once its first message no longer reads `old` (an edit or revoke landed)."""
    return await eventually(
        lambda: tenant_rows(pool, channel.tenant_id),
        lambda rows: bool(rows["messages"]) and rows["messages"][0]["message"] != old,
    )


class Conversation(NamedTuple):
    """A tenant's only client, contact, chat, member and message, and the message's attachments."""

    client: asyncpg.Record
    contact: asyncpg.Record
    chat: asyncpg.Record
    member: asyncpg.Record
    message: asyncpg.Record
    attachments: list[asyncpg.Record]

    def assert_linked(self) -> None:
        """The contact and chat are the client's; the member is the client's contact in the
        chat; the message is the member's, in the chat; the attachments are the message's."""
        client_id, chat_id = self.client["id"], self.chat["id"]
        assert (self.contact["client_id"], self.chat["client_id"]) == (client_id, client_id)
        assert (self.member["chat_id"], self.member["client_id"]) == (chat_id, client_id)
        assert self.member["client_contact_id"] == self.contact["id"]
        assert (self.message["chat_id"], self.message["sender_id"]) == (chat_id, self.member["id"])
        assert {a["message_id"] for a in self.attachments} <= {self.message["id"]}


async def first_conversation(pool: asyncpg.Pool, owner: TenantChannel | uuid.UUID) -> Conversation:
    """A tenant's rows once its first message is stored: exactly one client, contact, chat,
    member and message (fails otherwise), linked to each other."""
    rows = await wait_messages(pool, owner, 1)
    [client], [contact], [chat], [member], [message] = (
        rows[table] for table in ("clients", "contacts", "chats", "members", "messages")
    )
    conversation = Conversation(client, contact, chat, member, message, rows["attachments"])
    conversation.assert_linked()
    return conversation
