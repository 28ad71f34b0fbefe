"""What the dispatcher writes, each in the caller's transaction: the reply's message and
command row with their chat events, its sender member, a failure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from handlers import chat_events
from handlers.chat_events import Payload, enqueue
from handlers.outbound.plan import Plan
from handlers.pg import pg_text
from ingest.config import Transport
from ingest.events import SendCommand
from sql import QUERIES


@dataclass(frozen=True, slots=True)
class Recorded:
    """The command's message as recorded: what its chat events name."""

    tenant_id: uuid.UUID
    client_id: int
    chat_id: int
    message_id: int
    command_id: uuid.UUID

    @property
    def event_ids(self) -> tuple[uuid.UUID, int, int, int, uuid.UUID]:
        """tenant, client, chat, message and command: what every chat event of it names."""
        return (self.tenant_id, self.client_id, self.chat_id, self.message_id, self.command_id)


async def record_command(conn: asyncpg.Connection, plan: Plan) -> Recorded | None:
    """In the caller's transaction: the reply as a chat message of its sender member, the
    command (`pending`, or failed at once when a rule refused it) and their chat events. None
    when the command was recorded before (its id decides)."""
    command, channel = plan.command, plan.channel
    member_id = await reply_member(conn, command, channel.transport)
    claimed = await conn.fetchrow(
        QUERIES["claim_command"],
        command.command_id,
        command.tenant_id,
        command.chat_id,
        channel.id,
        command.user_id,
        plan.message.to,
        plan.message.email_message_id,
    )
    if claimed is None:
        return None
    target = Recorded(
        command.tenant_id,
        plan.client_id,
        command.chat_id,
        claimed["message_id"],
        command.command_id,
    )
    at: datetime = claimed["created_at"]
    text = pg_text(plan.text)
    await conn.execute(
        QUERIES["insert_reply_message"],
        target.message_id,
        command.chat_id,
        member_id,
        text,
        at,
    )
    uploads = [a.upload_id for a in plan.message.attachments]
    if uploads:
        await conn.execute(QUERIES["link_reply_attachments"], target.message_id, uploads)
    await conn.execute(QUERIES["advance_last_message_at"], [command.chat_id], [at])
    events = [
        chat_events.message_created(
            tenant_id=command.tenant_id,
            client_id=plan.client_id,
            chat_id=command.chat_id,
            member_id=member_id,
            message_id=target.message_id,
            transport=channel.transport,
            text=text,
            sent_at=None,
            attachments=[
                chat_events.attachment(
                    a.upload_id, "file", f"upload:{a.upload_id}", a.mimetype, a.name, a.size
                )
                for a in plan.message.attachments
            ],
            command_id=command.command_id,
            at=at,
        )
    ]
    if plan.refusal is not None:
        events += await fail_command(
            conn, target, "failed", plan.refusal.code, plan.refusal.message, False
        )
    await enqueue(conn, [(event, command.command_id) for event in events])
    return target


async def fail_command(
    conn: asyncpg.Connection,
    target: Recorded,
    state: str,
    code: str,
    reason: str,
    retryable: bool,
    provider_ids: tuple[str, ...] = (),
) -> list[Payload]:
    """Mark the command failed/unknown; its `message.updated` (none if it was already done)."""
    finished = await conn.fetchval(
        QUERIES["mark_command_failed"],
        target.command_id,
        state,
        code[:100],
        reason,
        retryable,
        list(provider_ids),
    )
    if finished is None:
        return []
    return [
        chat_events.send_failed(
            *target.event_ids,
            finished,
            code=code[:100],
            message=reason,
            retryable=retryable,
        )
    ]


async def reply_member(
    conn: asyncpg.Connection, command: SendCommand, transport: Transport
) -> uuid.UUID:
    """The member a reply is sent as: the user's (user_id set), or the chat's automated one.
    Get-or-create: the partial unique indexes of migration 0014 arbitrate concurrent creators;
    the loser reads the winner's row in its next statement (a new snapshot)."""
    role = {"role": "user" if command.user_id is not None else "automated"}
    created = await conn.fetchval(
        QUERIES["insert_reply_member"],
        command.tenant_id,
        command.chat_id,
        command.user_id,
        transport,
        role,
    )
    if created is not None:
        return uuid.UUID(str(created))
    found = await conn.fetchval(
        QUERIES["find_reply_member"], command.chat_id, transport, command.user_id
    )
    assert found is not None, "a member conflicted on insert yet cannot be found"
    return uuid.UUID(str(found))
