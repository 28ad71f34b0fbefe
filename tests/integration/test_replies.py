"""Replies end to end on real services: a command on the real broker -> the dispatcher inside
`running_consumer` -> the provider fakes over HTTP (tests/fakes) -> rows and chat events in
PostgreSQL -> a later status webhook through the gateway settles the reply.

The fakes are the session's servers, reset per test; this module runs its own pipeline (topics,
consumer groups, database) pointed at them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from handlers.app import running_consumer
from handlers.outbound.records import reply_member
from handlers.replay import Range, replay_dead_letters, replay_topic
from ingest.commands import publish_commands
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.events import SendCommand
from ingest.objectstore import open_store
from sql.db import create_pool, pooled
from tests.fakes.fixtures import fake_provider_settings
from tests.fakes.harness import Scripted
from tests.fakes.smtp import SmtpFake
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake
from tests.integration.pipeline import Gateway, isolated_pipeline, open_gateway, read_topic
from tests.integration.replies import (
    BOT_TOKEN,
    WA_ACCESS_TOKEN,
    WA_PHONE_NUMBER_ID,
    chat_of,
    command_events,
    command_row,
    finished,
    new_user,
    publish,
    published_events,
    reply,
    sender_member,
)
from tests.integration.signing import (
    AUTH_TOKEN,
    eml,
    post_email,
    post_sms,
    post_telegram,
    post_whatsapp,
    signed_channel,
    sms_fields,
    tg_payload,
    wa_message,
    wa_statuses,
    wa_text,
)
from tests.support import eventually

TG_UPDATE = tg_payload("text_official.json")
TG_CHAT = TG_UPDATE["message"]["chat"]["id"]


@pytest.fixture(scope="module")
async def reply_settings(
    services: ResolvedServices,
    _telegram_fake: TelegramFake,
    _whatsapp_fake: WhatsAppFake,
    _twilio_fake: TwilioFake,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    media: Path = tmp_path_factory.mktemp("reply-media")
    return await isolated_pipeline(
        services,
        "replies",
        **fake_provider_settings(_telegram_fake, _whatsapp_fake, _twilio_fake),
        media_store=media.as_uri(),
        outbound_max_attempts=3,
        outbound_backoff_initial_s=0.05,
        outbound_backoff_max_s=2.0,
        outbound_timeout_s=10.0,
    )


@pytest.fixture(scope="module")
async def reply_pool(reply_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(reply_settings.database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def reply_consumer(reply_settings: Settings) -> AsyncIterator[None]:
    async with running_consumer(reply_settings):
        yield


@pytest.fixture(scope="module")
async def reply_gateway(
    reply_settings: Settings, reply_pool: asyncpg.Pool
) -> AsyncIterator[Gateway]:
    async with open_gateway(reply_settings, reply_pool) as gateway:
        yield gateway


@pytest.fixture
async def telegram_chat(
    reply_consumer: None,
    reply_gateway: Gateway,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
) -> tuple[Any, int]:
    """A tenant's Telegram channel with a bot token, and the chat its first inbound update made."""
    telegram_api.add_bot(BOT_TOKEN)
    channel = await signed_channel(reply_pool, "telegram", bot_token=BOT_TOKEN)
    assert (await post_telegram(reply_gateway, channel, TG_UPDATE)).status_code == 200
    return channel, await chat_of(reply_pool, channel)


# --- Telegram: the whole path, and exactly once --------------------------------------------


async def test_reply_goes_out_as_the_users_message_with_its_chat_events(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    user = await new_user(reply_pool, channel.tenant_id)
    command, row = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="Your order has shipped"
    )
    assert (row["state"], row["attempts"], row["error_code"]) == ("accepted", 1, None)

    # The provider received exactly the documented request (provider-apis.md §1.4).
    [call] = telegram_api.server.calls("sendmessage")
    assert (call.method, call.path) == ("POST", f"/bot{BOT_TOKEN}/sendMessage")
    assert call.headers["content-type"] == "application/json"
    assert json.loads(call.body) == {"chat_id": TG_CHAT, "text": "Your order has shipped"}
    assert row["provider_message_ids"] == [f"{TG_CHAT}:1"]

    # The message is the user's, in the chat; sent_at waits for a provider status.
    member = await sender_member(reply_pool, row["message_id"])
    assert (member["user_id"], member["client_contact_id"], member["transport"]) == (
        user,
        None,
        "telegram",
    )
    assert (member["message_chat_id"], member["message"], member["sent_at"]) == (
        chat_id,
        "Your order has shipped",
        None,
    )
    ref = await reply_pool.fetchval(
        "SELECT external_id FROM ingest_message_refs WHERE message_id = $1", row["message_id"]
    )
    assert ref == f"{TG_CHAT}:1"

    created, accepted = await published_events(reply_pool, command.command_id, 2)
    assert created["event_type"] == "message.created"
    assert (created["direction"], created["command_id"]) == ("outbound", str(command.command_id))
    assert (created["member_id"], created["message_id"]) == (str(member["id"]), row["message_id"])
    assert (accepted["event_type"], accepted["change"], accepted["status"]) == (
        "message.updated",
        "status",
        "accepted",
    )
    assert accepted["command_id"] == str(command.command_id)
    # The inbound message's own event now says so.
    inbound = await reply_pool.fetch(
        """SELECT e.event FROM ingest_outbox o,
                  json_array_elements(o.events) AS e(event)
           WHERE e.event->>'event_type' = 'message.created'
             AND e.event->>'tenant_id' = $1""",
        str(channel.tenant_id),
    )
    directions = sorted(r["event"]["direction"] for r in inbound)
    assert directions == ["inbound", "outbound"]


async def test_redelivered_and_replayed_commands_are_not_sent_twice(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    user = await new_user(reply_pool, channel.tenant_id)
    command, done = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="once"
    )
    assert done["state"] == "accepted"
    # The topic's records again, as a replay or a producer's retry would bring them.
    records = await read_topic(
        reply_settings.kafka_bootstrap_servers, reply_settings.outbound_commands_topic, idle_s=1.0
    )
    mine = [r for r in records if json.loads(r.value)["command_id"] == str(command.command_id)]
    assert len(mine) == 1
    await publish_commands(reply_settings, [command, command])
    # A later command of the same chat shares the partition: once it is done, so are the copies.
    _sentinel, done = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="next"
    )
    assert done["state"] == "accepted"
    assert [m.text for m in telegram_api.sent] == ["once", "next"]
    assert len(telegram_api.server.calls("sendmessage")) == 2
    # One message, one created event and one accepted event for the command.
    events = await command_events(reply_pool, command.command_id)
    assert [(e["event_type"], e.get("change")) for e in events] == [
        ("message.created", None),
        ("message.updated", "status"),
    ]
    messages = await reply_pool.fetchval(
        "SELECT count(*) FROM ingest_outbound_commands WHERE chat_id = $1", chat_id
    )
    assert messages == 2


async def test_flood_control_is_waited_out_in_order(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    telegram_api.flood[TG_CHAT] = 1  # 429, retry_after 1
    first = await publish(reply_settings, tenant_id=channel.tenant_id, chat_id=chat_id, text="a")
    second = await publish(reply_settings, tenant_id=channel.tenant_id, chat_id=chat_id, text="b")
    row = await finished(reply_pool, first.command_id)
    assert (row["state"], row["attempts"]) == ("accepted", 2)
    assert (await finished(reply_pool, second.command_id))["state"] == "accepted"
    assert [m.text for m in telegram_api.sent] == ["a", "b"]  # the chat's order held
    # user_id null: an automated message, sent by the chat's one automated member.
    member = await sender_member(reply_pool, row["message_id"])
    assert (member["user_id"], member["transport_meta"]) == (None, {"role": "automated"})


async def test_blocked_by_the_user_fails_fast_and_says_so(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    telegram_api.blocked.add(TG_CHAT)
    command, row = await reply(reply_settings, reply_pool, channel, chat_id, text="x")
    assert (row["state"], row["error_retryable"], row["attempts"]) == ("failed", False, 1)
    assert len(telegram_api.server.calls("sendmessage")) == 1
    _, failed = await published_events(reply_pool, command.command_id, 2)
    assert failed["change"] == "failed"
    assert failed["error"]["retryable"] is False
    assert "blocked" in failed["error"]["message"]


async def test_transient_failures_past_the_limit_fail_retryable(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    telegram_api.failing[TG_CHAT] = 5  # 502s, more than outbound_max_attempts (3)
    _command, row = await reply(reply_settings, reply_pool, channel, chat_id, text="x")
    assert (row["state"], row["error_retryable"], row["attempts"]) == ("failed", True, 3)
    assert len(telegram_api.server.calls("sendmessage")) == 3
    assert telegram_api.sent == []


async def test_missing_bot_token_names_the_key_and_the_command(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    reply_gateway: Gateway,
    reply_consumer: None,
    telegram_api: TelegramFake,
) -> None:
    channel = await signed_channel(reply_pool, "telegram")  # no bot_token
    assert (await post_telegram(reply_gateway, channel, TG_UPDATE)).status_code == 200
    chat_id = await chat_of(reply_pool, channel)
    _command, row = await reply(reply_settings, reply_pool, channel, chat_id, text="x")
    assert (row["state"], row["attempts"]) == ("failed", 0)
    assert (
        f"crm-ingest channel set {channel.channel_id} --config bot_token=" in row["error_message"]
    )
    assert telegram_api.server.calls("sendmessage") == []


async def test_templates_render_literally_and_a_missing_parameter_fails(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    template_id = await reply_pool.fetchval(
        "INSERT INTO crm_message_templates (tenant_id, template) VALUES ($1, $2) RETURNING id",
        channel.tenant_id,
        "Hi {{name}}, order {{order}} has shipped",
    )
    params = {"name": "{{order}}", "order": "<b>42</b>"}
    ok = await publish(
        reply_settings,
        tenant_id=channel.tenant_id,
        chat_id=chat_id,
        template_id=template_id,
        template_params=params,
    )
    missing = await publish(
        reply_settings,
        tenant_id=channel.tenant_id,
        chat_id=chat_id,
        template_id=template_id,
        template_params={"name": "Ann"},
    )
    assert (await finished(reply_pool, ok.command_id))["state"] == "accepted"
    row = await finished(reply_pool, missing.command_id)
    assert (row["state"], row["error_code"]) == ("failed", "template_parameter_missing")
    assert row["error_message"] == "template parameter missing: order"
    assert [m.text for m in telegram_api.sent] == ["Hi {{order}}, order <b>42</b> has shipped"]
    assert "parse_mode" not in telegram_api.sent[0].params


# --- tenant isolation and bad commands -------------------------------------------------------


async def test_another_tenants_chat_or_channel_is_dead_lettered_and_nothing_else(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    other = await signed_channel(reply_pool, "telegram", bot_token=BOT_TOKEN)
    foreign_chat = await publish(
        reply_settings, tenant_id=other.tenant_id, chat_id=chat_id, text="x"
    )
    foreign_channel = await publish(
        reply_settings,
        tenant_id=channel.tenant_id,
        chat_id=chat_id,
        channel_id=other.channel_id,
        text="x",
    )
    rows = await eventually(
        lambda: reply_pool.fetch(
            """SELECT event_id, error_message FROM ingest_dead_letters WHERE source_topic = $1
               AND event_id = ANY($2::uuid[])""",
            reply_settings.outbound_commands_topic,
            [foreign_chat.command_id, foreign_channel.command_id],
        ),
        lambda found: len(found) == 2,
    )
    reasons = {r["event_id"]: r["error_message"] for r in rows}
    assert reasons[foreign_chat.command_id] == f"chat {chat_id} belongs to another tenant"
    assert reasons[foreign_channel.command_id] == (
        f"channel {other.channel_id} belongs to another tenant"
    )
    for command in (foreign_chat, foreign_channel):
        assert await command_row(reply_pool, command.command_id) is None
        assert await command_events(reply_pool, command.command_id) == []
    assert telegram_api.server.calls("sendmessage") == []


# --- WhatsApp: the 24-hour window both ways, and statuses that settle a reply ----------------

CLIENT_IN = "15550001111"
CLIENT_OUT = "15550002222"


async def whatsapp_chat(
    pool: asyncpg.Pool, gateway: Gateway, whatsapp_api: WhatsAppFake, sender: str, age_s: int
) -> tuple[Any, int]:
    whatsapp_api.add_token(WA_ACCESS_TOKEN)
    whatsapp_api.phone_numbers.add(WA_PHONE_NUMBER_ID)
    channel = await signed_channel(
        pool, "whatsapp", access_token=WA_ACCESS_TOKEN, phone_number_id=WA_PHONE_NUMBER_ID
    )
    element = wa_text(
        "hello", wamid=f"wamid.in-{sender}", timestamp=int(time.time()) - age_s, sender=sender
    )
    assert (await post_whatsapp(gateway, channel, wa_message(element))).status_code == 200
    return channel, await chat_of(pool, channel)


async def test_inside_the_window_text_goes_out_and_statuses_settle_it(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    reply_gateway: Gateway,
    reply_consumer: None,
    whatsapp_api: WhatsAppFake,
) -> None:
    channel, chat_id = await whatsapp_chat(reply_pool, reply_gateway, whatsapp_api, CLIENT_IN, 3600)
    user = await new_user(reply_pool, channel.tenant_id)
    command, row = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="On its way"
    )
    assert row["state"] == "accepted"
    [call] = whatsapp_api.graph.calls("send")
    assert call.path == f"/v25.0/{WA_PHONE_NUMBER_ID}/messages"
    assert call.headers["authorization"] == f"Bearer {WA_ACCESS_TOKEN}"
    body = json.loads(call.body)
    assert (body["messaging_product"], body["to"], body["type"]) == (
        "whatsapp",
        f"+{CLIENT_IN}",
        "text",
    )
    assert body["text"]["body"] == "On its way"
    [wamid] = row["provider_message_ids"]
    assert wamid == whatsapp_api.sent[0].wamid

    # Meta's statuses for it arrive later, signed, through the gateway.
    sent_at, read_at = int(time.time()) + 1, int(time.time()) + 5
    statuses = wa_statuses(
        {"id": wamid, "status": "sent", "timestamp": str(sent_at), "recipient_id": CLIENT_IN},
        {"id": wamid, "status": "read", "timestamp": str(read_at), "recipient_id": CLIENT_IN},
    )
    assert (await post_whatsapp(reply_gateway, channel, statuses)).status_code == 200
    member = await eventually(
        lambda: sender_member(reply_pool, row["message_id"]), lambda m: m["read_at"] is not None
    )
    assert member["sent_at"] == datetime.fromtimestamp(sent_at, UTC).replace(tzinfo=None)
    assert member["read_at"] == datetime.fromtimestamp(read_at, UTC).replace(tzinfo=None)
    events = await published_events(reply_pool, command.command_id, 2)
    assert [(e["event_type"], e.get("status")) for e in events] == [
        ("message.created", None),
        ("message.updated", "accepted"),
    ]
    settled = await eventually(
        lambda: reply_pool.fetch(
            f"""SELECT e.event FROM ingest_outbox o, json_array_elements(o.events) AS e(event)
                WHERE e.event->>'message_id' = '{row["message_id"]}'
                  AND e.event->>'change' = 'status' AND e.event->>'status' = 'read'"""
        ),
        lambda found: len(found) == 1,
    )
    assert settled[0]["event"]["command_id"] == str(command.command_id)


async def test_outside_the_window_only_a_template_goes_out(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    reply_gateway: Gateway,
    reply_consumer: None,
    whatsapp_api: WhatsAppFake,
) -> None:
    channel, chat_id = await whatsapp_chat(
        reply_pool, reply_gateway, whatsapp_api, CLIENT_OUT, 25 * 3600
    )
    whatsapp_api.templates[("order_update", "en_US")] = 1
    text, row = await reply(reply_settings, reply_pool, channel, chat_id, text="hi")
    assert (row["state"], row["error_code"], row["error_retryable"]) == (
        "failed",
        "outside_window",
        False,
    )
    assert "25 hours ago" in row["error_message"]
    assert "whatsapp_template" in row["error_message"]
    assert whatsapp_api.graph.calls("send") == []
    _, failed = await published_events(reply_pool, text.command_id, 2)
    assert failed["error"]["code"] == "outside_window"

    _template, done = await reply(
        reply_settings,
        reply_pool,
        channel,
        chat_id,
        whatsapp_template={"name": "order_update", "language": "en_US", "parameters": ["42"]},
    )
    assert done["state"] == "accepted"
    [call] = whatsapp_api.graph.calls("send")
    body = json.loads(call.body)
    assert (body["to"], body["type"]) == (f"+{CLIENT_OUT}", "template")
    assert body["template"]["name"] == "order_update"
    assert body["template"]["language"]["code"] == "en_US"


# --- email: threading into the client's mailbox ----------------------------------------------


async def test_email_replies_thread_into_the_conversation(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    reply_gateway: Gateway,
    reply_consumer: None,
    smtp_server: SmtpFake,
) -> None:
    channel = await signed_channel(
        reply_pool, "email", smtp_url=smtp_server.url(), from_address="support@shop.example.com"
    )
    assert (await post_email(reply_gateway, channel, eml("reply"))).status_code == 200
    chat_id = await chat_of(reply_pool, channel)
    user = await new_user(reply_pool, channel.tenant_id)
    _first, row = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="Glad!"
    )
    assert row["state"] == "accepted"
    [received] = smtp_server.received
    assert received.rcpt_tos == ["peter@example.org"]
    mail = message_from_bytes(received.data, policy=SMTP_POLICY)
    # The Message-ID was generated and recorded before the send, on the from_address domain.
    assert mail["Message-ID"] == row["email_message_id"]
    assert row["email_message_id"].endswith("@shop.example.com>")
    assert mail["In-Reply-To"] == "<reply-2@mail.example.org>"
    assert mail["References"].split() == [
        "<ticket-88-0@shop.example.com>",
        "<ticket-88-1@shop.example.com>",
        "<reply-2@mail.example.org>",
    ]
    assert mail["Subject"] == "Re: Your ticket #88"

    # The next reply threads onto ours, the conversation's latest email now.
    _second, done = await reply(
        reply_settings, reply_pool, channel, chat_id, user_id=user, text="Also…"
    )
    assert done["state"] == "accepted"
    again = message_from_bytes(smtp_server.received[1].data, policy=SMTP_POLICY)
    assert again["In-Reply-To"] == row["email_message_id"]
    assert again["References"].split()[-2:] == [
        "<reply-2@mail.example.org>",
        row["email_message_id"],
    ]
    assert again["Subject"] == "Re: Your ticket #88"


# --- SMS: Twilio's StatusCallback settles the reply ------------------------------------------

TWILIO_ACCOUNT = "ACb2722d11b73d22b594c81d79aed6b8d2"  # the captures' account
OUR_NUMBER, CLIENT_PHONE = "+18446151430", "+18017916516"
PUBLIC_URL = "https://crm.example.com/webhooks/sms/acme"


async def test_sms_reply_names_our_callback_and_its_status_settles_it(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    reply_gateway: Gateway,
    reply_consumer: None,
    twilio_api: TwilioFake,
) -> None:
    twilio_api.add_account(TWILIO_ACCOUNT, AUTH_TOKEN)
    channel = await signed_channel(
        reply_pool,
        "sms",
        account_sid=TWILIO_ACCOUNT,
        public_url=PUBLIC_URL,
        **{"from": OUR_NUMBER},
    )
    inbound = sms_fields("basic_text")
    assert (
        await post_sms(reply_gateway, channel, inbound, signed_url=PUBLIC_URL)
    ).status_code == 200
    chat_id = await chat_of(reply_pool, channel)
    _command, row = await reply(reply_settings, reply_pool, channel, chat_id, text="Ok!")
    assert row["state"] == "accepted"
    [sent] = twilio_api.sent
    assert sent.form["To"] == [CLIENT_PHONE]
    assert sent.form["From"] == [OUR_NUMBER]
    assert sent.form["Body"] == ["Ok!"]
    assert sent.form["StatusCallback"] == [PUBLIC_URL]
    assert row["provider_message_ids"] == [sent.sid]

    status = sms_fields(
        "status_delivered",
        MessageSid=sent.sid,
        SmsSid=sent.sid,
        MessageStatus="sent",
        SmsStatus="sent",
        AccountSid=TWILIO_ACCOUNT,
    )
    assert (
        await post_sms(reply_gateway, channel, status, signed_url=PUBLIC_URL)
    ).status_code == 200
    member = await eventually(
        lambda: sender_member(reply_pool, row["message_id"]), lambda m: m["sent_at"] is not None
    )
    assert member["sent_at"] is not None
    assert member["read_at"] is None


# --- ops: replaying the commands topic and dead-lettered commands ----------------------------


async def test_replay_of_the_commands_topic_and_of_a_dead_letter_go_through_the_dispatcher(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    command, done = await reply(reply_settings, reply_pool, channel, chat_id, text="first")
    assert done["state"] == "accepted"
    # A user the host creates only later: the command is dead-lettered, then replayed.
    user_id = await reply_pool.fetchval("SELECT coalesce(max(id), 0) + 1000 FROM core_users")
    early = await publish(
        reply_settings, tenant_id=channel.tenant_id, chat_id=chat_id, user_id=user_id, text="x"
    )
    dead = await eventually(
        lambda: reply_pool.fetchrow(
            "SELECT id, error_message FROM ingest_dead_letters WHERE event_id = $1",
            early.command_id,
        ),
        lambda row: row is not None,
    )
    assert dead["error_message"] == f"unknown user {user_id}"

    commands = reply_settings.outbound_commands_topic
    summary = await replay_topic(reply_settings, commands, Range(from_offset=0), idle_timeout_s=1.0)
    mine = await reply_pool.fetchval(
        "SELECT count(*) FROM ingest_outbound_commands WHERE chat_id = $1", chat_id
    )
    assert mine == 1
    assert summary.already_present >= 1  # ours among the topic's commands, none executed again
    assert [m.text for m in telegram_api.sent] == ["first"]

    await reply_pool.execute(
        "INSERT INTO core_users (id, tenant_id) VALUES ($1, $2)", user_id, channel.tenant_id
    )
    result = await replay_dead_letters(reply_settings, [dead["id"]])
    assert (result["replayed"], result["still_failing"], result["created"]) == (1, 0, 1)
    row = await finished(reply_pool, early.command_id)
    assert row["state"] == "accepted"
    assert [m.text for m in telegram_api.sent] == ["first", "x"]
    assert command.command_id != early.command_id


# --- attachments: stored uploads only --------------------------------------------------------


async def test_stored_uploads_go_out_and_others_are_refused(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    data = b"%PDF-1.7 invoice " * 1000
    store = open_store(reply_settings.media_store)
    try:
        stored = await store.put_bytes(f"uploads/{uuid.uuid4().hex}", data, "application/pdf")
    finally:
        await store.close()
    insert = """INSERT INTO core_uploads (tenant_id, hash, path, name, size, mimetype)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING id"""
    upload = await reply_pool.fetchval(
        insert,
        channel.tenant_id,
        stored.sha256,
        stored.url,
        "invoice.pdf",
        len(data),
        "application/pdf",
    )
    # A provider-hosted file whose bytes were never fetched: its path is not in the store.
    pending = await reply_pool.fetchval(
        insert, channel.tenant_id, "", "telegram:AgADBAAD", "photo.jpg", 0, "image/jpeg"
    )
    command, row = await reply(
        reply_settings, reply_pool, channel, chat_id, text="Your invoice", attachments=[upload]
    )
    assert row["state"] == "accepted"
    [sent] = telegram_api.sent
    assert (sent.method, sent.caption) == ("sendDocument", "Your invoice")
    assert sent.upload is not None
    assert (sent.upload.data, sent.upload.filename) == (data, "invoice.pdf")
    linked = await reply_pool.fetch(
        "SELECT upload_id FROM crm_chat_message_attachments WHERE message_id = $1",
        row["message_id"],
    )
    assert [r["upload_id"] for r in linked] == [upload]
    created, _ = await published_events(reply_pool, command.command_id, 2)
    assert [a["upload_id"] for a in created["attachments"]] == [upload]

    _, refused = await reply(
        reply_settings, reply_pool, channel, chat_id, text="photo", attachments=[pending]
    )
    assert (refused["state"], refused["error_code"]) == ("failed", "attachment_not_stored")
    assert refused["error_message"] == f"attachment {pending} is not stored"
    assert len(telegram_api.sent) == 1


async def test_a_reply_to_a_message_names_it_at_the_provider(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    channel, chat_id = telegram_chat
    inbound = await reply_pool.fetchval(
        "SELECT message_id FROM ingest_message_refs WHERE channel_id = $1", channel.channel_id
    )
    _, row = await reply(
        reply_settings, reply_pool, channel, chat_id, text="About that", reply_to_message_id=inbound
    )
    assert row["state"] == "accepted"
    [sent] = telegram_api.sent
    assert sent.reply_to_message_id == TG_UPDATE["message"]["message_id"]
    accepted = REGISTRY.get_sample_value(
        "crm_ingest_outbound_commands_total", {"transport": "telegram", "outcome": "accepted"}
    )
    assert accepted is not None
    assert accepted >= 1


async def test_concurrent_first_replies_of_a_user_share_one_member(
    reply_pool: asyncpg.Pool, telegram_chat: tuple[Any, int]
) -> None:
    """The partial unique index decides: the second creator waits for the first, then reads
    its member instead of adding another."""
    channel, chat_id = telegram_chat
    user = await new_user(reply_pool, channel.tenant_id)
    command = SendCommand(
        command_id=uuid.uuid4(),
        tenant_id=channel.tenant_id,
        chat_id=chat_id,
        user_id=user,
        text="x",
    )
    async with reply_pool.acquire() as first, reply_pool.acquire() as second:
        outer = first.transaction()
        await outer.start()
        mine = await reply_member(pooled(first), command, "telegram")
        async with second.transaction():
            racing = asyncio.create_task(reply_member(pooled(second), command, "telegram"))
            await asyncio.sleep(0.3)
            assert not racing.done()  # waiting on the first transaction's index entry
            await outer.commit()
            theirs = await racing
    assert theirs == mine
    members = await reply_pool.fetchval(
        "SELECT count(*) FROM crm_chat_members WHERE chat_id = $1 AND user_id = $2", chat_id, user
    )
    assert members == 1


async def test_a_split_text_cut_short_is_not_resent(
    reply_settings: Settings,
    reply_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    telegram_chat: tuple[Any, int],
) -> None:
    """Over 4096 characters a Telegram reply is two messages; the first goes out, the second
    gets a 502. Retrying the whole would repeat the first, so it fails `partially_sent` with
    the first part's id recorded."""
    channel, chat_id = telegram_chat
    first_part = {"ok": True, "result": {"message_id": 77, "chat": {"id": TG_CHAT}, "date": 0}}
    telegram_api.server.script(
        "sendmessage",
        Scripted(200, json=first_part),
        Scripted(502, json={"ok": False, "error_code": 502, "description": "Bad Gateway"}),
    )
    _, row = await reply(reply_settings, reply_pool, channel, chat_id, text="word " * 1000)
    assert (row["state"], row["error_code"], row["error_retryable"]) == (
        "failed",
        "partially_sent",
        False,
    )
    assert row["provider_message_ids"] == [f"{TG_CHAT}:77"]
    assert len(telegram_api.server.calls("sendmessage")) == 2  # not a third
    ref = await reply_pool.fetchval(
        "SELECT external_id FROM ingest_message_refs WHERE message_id = $1", row["message_id"]
    )
    assert ref == f"{TG_CHAT}:77"
