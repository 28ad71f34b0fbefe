"""Helpers of the reply tests: users, commands published to the real broker, and what the
dispatcher recorded (read independently of sql/queries/outbound.sql)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from ingest.commands import publish_commands
from ingest.config import Settings
from ingest.events import SendCommand
from tests.integration.pipeline import OUTBOX_EVENTS, TenantChannel
from tests.support import eventually

BOT_TOKEN = "7000000001:AAF-it-bot-token-0123456789abcdefghij"
WA_ACCESS_TOKEN = "EAAG-it-access-token-0123456789"
# The number of the pywa-based WhatsApp fixtures (their metadata.phone_number_id).
WA_PHONE_NUMBER_ID = "106540352242922"
FINISHED = ("accepted", "failed", "unknown")


async def new_user(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> int:
    """A CRM user of the tenant (core_users, as the host app would have it)."""
    user_id: int = await pool.fetchval(
        "INSERT INTO core_users (tenant_id) VALUES ($1) RETURNING id", tenant_id
    )
    return user_id


async def chat_of(pool: asyncpg.Pool, channel: TenantChannel) -> int:
    """The tenant's one chat, once its first inbound message made it."""
    chat_id = await eventually(
        lambda: pool.fetchval(
            "SELECT id FROM crm_chats WHERE tenant_id = $1 ORDER BY id LIMIT 1", channel.tenant_id
        ),
        lambda found: found is not None,
    )
    assert chat_id is not None
    return int(chat_id)


async def publish(settings: Settings, **fields: Any) -> SendCommand:
    """One message.send command on the commands topic, acknowledged by the broker."""
    command = SendCommand.model_validate({"command_id": uuid.uuid4(), **fields})
    await publish_commands(settings, [command])
    return command


async def command_row(pool: asyncpg.Pool, command_id: uuid.UUID) -> Any:
    return await pool.fetchrow(
        "SELECT * FROM ingest_outbound_commands WHERE command_id = $1", command_id
    )


async def finished(pool: asyncpg.Pool, command_id: uuid.UUID, within: float = 30.0) -> Any:
    """The command's row once it reached a final state (the caller asserts which)."""
    row = await eventually(
        lambda: command_row(pool, command_id),
        lambda r: r is not None and r["state"] in FINISHED,
        within=within,
    )
    assert row is not None, "the command was never recorded"
    return row


async def command_events(pool: asyncpg.Pool, command_id: uuid.UUID) -> list[dict[str, Any]]:
    """The chat events a command caused, in outbox order."""
    rows = await pool.fetch(
        f"SELECT event, published_at FROM ({OUTBOX_EVENTS}) e WHERE source_event_id = $1",
        command_id,
    )
    return [dict(r["event"], published=r["published_at"] is not None) for r in rows]


async def published_events(
    pool: asyncpg.Pool, command_id: uuid.UUID, count: int
) -> list[dict[str, Any]]:
    """The command's chat events once `count` of them were published by the relay."""
    return await eventually(
        lambda: command_events(pool, command_id),
        lambda events: len(events) >= count and all(e["published"] for e in events),
    )


async def sender_member(pool: asyncpg.Pool, message_id: int) -> Any:
    return await pool.fetchrow(
        """SELECT mem.*, m.message, m.sent_at, m.read_at, m.chat_id AS message_chat_id
           FROM crm_chat_messages m JOIN crm_chat_members mem ON mem.id = m.sender_id
           WHERE m.id = $1""",
        message_id,
    )


async def reply(
    settings: Settings, pool: asyncpg.Pool, channel: TenantChannel, chat_id: int, **fields: Any
) -> tuple[SendCommand, Any]:
    """A command into the channel's tenant's chat, published, and its row once finished."""
    command = await publish(settings, tenant_id=channel.tenant_id, chat_id=chat_id, **fields)
    return command, await finished(pool, command.command_id)
