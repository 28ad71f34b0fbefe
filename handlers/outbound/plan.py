"""A `message.send` command turned into what will be sent: validated against the database
(tenant owns chat, channel, user, uploads), its channel and recipient picked, its text rendered,
and the rules providers enforce checked BEFORE any call (a `Refusal`).

`InvalidCommand`: the command cannot be a message at all (dead-lettered, no chat event).
`Refusal`: a valid command a rule refuses; it is recorded as a message and failed, so agents
see it.
"""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from handlers.outbound.render import MissingParameters, render
from ingest.config import SettingsError, Transport
from ingest.errors import IngestError
from ingest.events import SendCommand
from ingest.transports.base import Channel
from ingest.transports.sending import (
    EmailThread,
    MessageSender,
    OutboundAttachment,
    OutboundMessage,
    SendRejected,
    WhatsAppTemplate,
)
from sql import QUERIES

# WhatsApp's customer-service window (provider-apis.md §2): free-form messages only within 24
# hours of the client's last message; after it, only an approved template.
WHATSAPP_WINDOW = timedelta(hours=24)
MAX_REFERENCES = 20  # msg-ids kept in an email reply's References (the newest ones)


class InvalidCommand(Exception):
    """Cannot be a message (malformed reference, unknown or another tenant's chat, channel,
    user or upload): dead-lettered with this reason."""


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str


class Channels(Protocol):
    """The channel directory (ingest.channels.ChannelDirectory): decrypted config by id."""

    async def get(self, channel_id: str) -> Channel | None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    command: SendCommand
    client_id: int
    channel: Channel
    message: OutboundMessage
    text: str  # the message as recorded in crm_chat_messages
    refusal: Refusal | None

    @property
    def transport(self) -> Transport:
        return self.channel.transport


def reply_refs(transport: Transport, to: str, provider_ids: tuple[str, ...]) -> list[str]:
    """Provider ids as `ingest_message_refs.external_id`, written the way the inbound adapters
    write theirs, so statuses and replies find the message: Telegram ids are per chat
    (`<chat>:<message>`; the sender returns them so), an email's Message-ID goes without its
    angle brackets."""
    if transport == "telegram":
        return [pid if ":" in pid else f"{to}:{pid}" for pid in provider_ids]
    if transport == "email":
        return [pid.strip().strip("<>") for pid in provider_ids]
    return list(provider_ids)


def provider_reply_id(transport: Transport, external_id: str) -> str:
    """The id a provider wants for "in reply to", from our ref (inverse of `reply_refs`)."""
    return external_id.rpartition(":")[2] if transport == "telegram" else external_id


def email_thread(row: asyncpg.Record | None) -> EmailThread | None:
    """Threading of a reply into the conversation's last email (the inbound adapter keeps its
    subject and References in the ref's meta; ours keep theirs)."""
    if row is None:
        return None
    meta: dict[str, Any] = row["meta"] or {}
    chain = [*(meta.get("references") or []), row["external_id"]][-MAX_REFERENCES:]
    subject = meta.get("subject")
    return EmailThread(
        subject=subject if isinstance(subject, str) and subject else None,
        in_reply_to=f"<{row['external_id']}>",
        references=tuple(f"<{ref}>" for ref in chain if isinstance(ref, str) and ref),
    )


def _outside_window(last: asyncpg.Record | None, now: datetime) -> str | None:
    if last is None or last["sent_at"] is None:
        return "the client has not written on this WhatsApp channel"
    since = now - last["sent_at"].replace(tzinfo=UTC)
    if since <= WHATSAPP_WINDOW:
        return None
    return f"the client's last message was {since.total_seconds() / 3600:.0f} hours ago"


async def build_plan(
    conn: asyncpg.Connection,
    command: SendCommand,
    channels: Channels,
    senders: dict[Transport, MessageSender],
    store_prefix: str | None,
    recorded: asyncpg.Record | None = None,
    now: datetime | None = None,
) -> Plan:
    """Everything about a command the database and the rules decide; `recorded` is the
    command's row when it was recorded before (its channel, recipient and Message-ID hold)."""
    now = now or datetime.now(UTC)
    chat = await conn.fetchrow(QUERIES["outbound_chat"], command.chat_id)
    if chat is None:
        raise InvalidCommand(f"unknown chat {command.chat_id}")
    if chat["tenant_id"] != command.tenant_id:
        raise InvalidCommand(f"chat {command.chat_id} belongs to another tenant")
    if command.user_id is not None:
        user = await conn.fetchrow(QUERIES["outbound_user"], command.user_id)
        if user is None:
            raise InvalidCommand(f"unknown user {command.user_id}")
        if user["tenant_id"] not in (None, command.tenant_id):
            raise InvalidCommand(f"user {command.user_id} belongs to another tenant")

    channel_id = recorded["channel_id"] if recorded is not None else command.channel_id
    last = await conn.fetchrow(QUERIES["last_inbound"], command.chat_id, channel_id)
    if channel_id is None:
        if last is None:
            raise InvalidCommand(
                f"chat {command.chat_id} has no inbound message to reply on: name channel_id"
            )
        channel_id = last["channel_id"]
    channel = await _channel(channels, channel_id)
    if channel.tenant_id != command.tenant_id:
        raise InvalidCommand(f"channel {channel_id} belongs to another tenant")
    transport = channel.transport

    if recorded is not None:
        recipient = recorded["recipient"]
    elif last is not None:
        recipient = last["recipient"]
    else:
        recipient = await conn.fetchval(QUERIES["chat_recipient"], command.chat_id, transport)
    if not recipient:
        raise InvalidCommand(f"chat {command.chat_id} has no {transport} recipient")

    refusals: list[Refusal] = []
    text, template = await _content(conn, command, transport, refusals)
    attachments = await _attachments(conn, command, store_prefix, refusals)
    reason = _outside_window(last, now) if transport == "whatsapp" and not template else None
    if reason is not None:
        refusals.append(
            Refusal(
                "outside_window",
                f"WhatsApp delivers only an approved template outside the 24-hour "
                f"customer-service window ({reason}): send a whatsapp_template",
            )
        )
    if not channel.enabled:
        refusals.append(Refusal("channel_disabled", f"channel {channel.id} is disabled"))

    reply_to = None
    if command.reply_to_message_id is not None:
        target = await conn.fetchval(
            QUERIES["reply_target"], command.reply_to_message_id, channel.id, command.chat_id
        )
        reply_to = provider_reply_id(transport, target) if target else None

    email_id = thread = None
    if transport == "email":
        email_id = recorded["email_message_id"] if recorded is not None else None
        if email_id is None:
            domain = str(channel.config.get("from_address") or "").rpartition("@")[2]
            email_id = email.utils.make_msgid(domain=domain or None)
        thread = email_thread(await conn.fetchrow(QUERIES["last_email"], command.chat_id))

    message = OutboundMessage(
        command_id=command.command_id,
        to=str(recipient),
        text=None if template is not None else text,
        whatsapp_template=template,
        attachments=attachments,
        reply_to=reply_to,
        email_message_id=email_id,
        email_thread=thread,
    )
    if not refusals:
        try:
            senders[transport].check(message, channel.config)
        except SendRejected as exc:
            reason = exc.message.replace("<channel id>", str(channel.id))
            refusals.append(Refusal(exc.code, reason))
    refusal = refusals[0] if refusals else None
    return Plan(command, chat["client_id"], channel, message, text, refusal)


async def _channel(channels: Channels, channel_id: uuid.UUID) -> Channel:
    try:
        channel = await channels.get(str(channel_id))
    except (IngestError, SettingsError) as exc:
        # A secret that does not open: fixable by the operator, then `dlq replay`.
        raise InvalidCommand(f"channel {channel_id} cannot be loaded: {exc}") from exc
    if channel is None:
        raise InvalidCommand(f"unknown channel {channel_id}")
    return channel


async def _content(
    conn: asyncpg.Connection, command: SendCommand, transport: Transport, refusals: list[Refusal]
) -> tuple[str, WhatsAppTemplate | None]:
    """The text recorded (and sent), or the WhatsApp template sent."""
    if command.text is not None:
        return command.text, None
    if command.template_id is not None:
        source = await conn.fetchval(
            QUERIES["outbound_template"], command.template_id, command.tenant_id
        )
        if source is None:
            raise InvalidCommand(f"template {command.template_id} is not one of the tenant's")
        try:
            return render(source, command.template_params), None
        except MissingParameters as exc:
            refusals.append(Refusal("template_parameter_missing", str(exc)))
            return source, None
    spec = command.whatsapp_template
    assert spec is not None  # the model holds exactly one of the three
    template = WhatsAppTemplate(spec.name, spec.language, tuple(spec.parameters))
    if transport != "whatsapp":
        refusals.append(
            Refusal("template_not_supported", f"a whatsapp_template cannot go out on {transport}")
        )
    values = f": {', '.join(spec.parameters)}" if spec.parameters else ""
    return f"[WhatsApp template {spec.name} ({spec.language})]{values}", template


async def _attachments(
    conn: asyncpg.Connection,
    command: SendCommand,
    store_prefix: str | None,
    refusals: list[Refusal],
) -> tuple[OutboundAttachment, ...]:
    if not command.attachments:
        return ()
    rows = {r["id"]: r for r in await conn.fetch(QUERIES["outbound_uploads"], command.attachments)}
    found = []
    for upload_id in command.attachments:
        row = rows.get(upload_id)
        if row is None:
            raise InvalidCommand(f"unknown upload {upload_id}")
        if row["tenant_id"] not in (None, command.tenant_id):
            raise InvalidCommand(f"upload {upload_id} belongs to another tenant")
        path: str = row["path"]
        if store_prefix is None or not path.startswith(store_prefix):
            refusals.append(
                Refusal("attachment_not_stored", f"attachment {upload_id} is not stored")
            )
        found.append(
            OutboundAttachment(
                upload_id=upload_id,
                url=path,
                name=row["name"] or None,
                mimetype=row["mimetype"] or None,
                size=row["size"] or None,
            )
        )
    return tuple(found)
