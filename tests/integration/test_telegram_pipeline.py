"""Telegram webhook -> gateway -> real broker -> consumer -> real PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import datetime

import asyncpg
import pytest

from handlers.app import running_consumer
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.publisher import EventPublisher
from sql.db import create_pool
from tests.integration.pipeline import Gateway, TenantChannel, isolated_pipeline
from tests.integration.rows import (
    first_conversation,
    settled_rows,
    tenant_rows,
    wait_first_text_change,
    wait_messages,
)
from tests.integration.signing import (
    adapter_events,
    post_telegram,
    signed_channel,
    telegram_headers,
    tg_payload,
)
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]


async def test_new_sender_creates_client_contact_chat_member_and_message(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    response = await post_telegram(gateway, telegram, tg_payload("text_real_cyrillic.json"))
    assert response.status_code == 200, response.text

    client, contact, chat, member, message, _ = await first_conversation(pool, telegram)
    assert (client["first_name"], client["last_name"], client["phone_number"]) == (
        "Ирина",
        "Киселёва",
        None,
    )
    assert (contact["contact_type"], contact["contact_value"]) == ("telegram", "86815320")
    assert chat["tenant_id"] == telegram.tenant_id
    assert (member["user_id"], member["transport"]) == (None, "telegram")
    assert member["transport_meta"] == {
        "chat_id": 86815320,
        "user_id": 86815320,
        "username": "Irina_V_Kiseleva",
        "chat_type": "private",
        "language_code": "en",
    }
    assert message["message"] == "just text"
    assert message["sent_at"] == datetime(2023, 4, 1, 19, 42, 27)  # date 1680378147, UTC
    assert message["read_at"] is None
    assert chat["last_message_at"] == message["sent_at"]


async def test_second_message_reuses_client_chat_and_member(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    first = tg_payload("text_real_cyrillic.json")
    second = copy.deepcopy(first)
    second["update_id"] += 1
    second["message"]["message_id"] += 1
    second["message"]["date"] += 60
    second["message"]["text"] = "second"
    for update in (first, second):
        assert (await post_telegram(gateway, telegram, update)).status_code == 200

    rows = await wait_messages(pool, telegram.tenant_id, 2)
    assert [len(rows[k]) for k in ("clients", "contacts", "chats", "members")] == [1, 1, 1, 1]
    assert [m["message"] for m in rows["messages"]] == ["just text", "second"]
    assert {m["sender_id"] for m in rows["messages"]} == {rows["members"][0]["id"]}
    assert rows["chats"][0]["last_message_at"] == datetime(2023, 4, 1, 19, 43, 27)


async def test_same_update_delivered_twice_is_stored_once(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    update = tg_payload("photo.json")
    marker = tg_payload("text_official.json")  # a later message of another sender, same tenant
    for body in (update, update, marker):
        assert (await post_telegram(gateway, telegram, body)).status_code == 200

    rows = await settled_rows(pool, telegram, 2, settle_s=0.5)
    photo_messages = [m for m in rows["messages"] if m["message"] == "[photo]"]
    assert len(photo_messages) == 1
    [attachment] = rows["attachments"]  # the largest size only, once
    assert attachment["message_id"] == photo_messages[0]["id"]
    assert attachment["path"].startswith(
        "telegram:AgACAgIAAxkBAAMEZCiCg7A1qAABECDXqbjnqtId777bAAIFyDEbLKhISVFwzRK8kZMNAQADAgADeQAD"
    )
    assert (attachment["size"], attachment["mimetype"]) == (132533, "image/jpeg")


async def test_older_edit_never_overwrites_a_newer_one(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    newer = tg_payload("edited_message.json")
    newer["edited_message"]["text"] = "newest text"
    older = copy.deepcopy(newer)
    older["update_id"] -= 1
    older["edited_message"]["edit_date"] -= 100
    older["edited_message"]["text"] = "older text"
    original = tg_payload("text_official.json")  # same chat and message_id, no edit
    # Deliberately out of order: newest edit, then the older edit, then the original.
    for update in (newer, older, original):
        assert (await post_telegram(gateway, telegram, update)).status_code == 200

    marker = tg_payload("text_real_cyrillic.json")
    assert (await post_telegram(gateway, telegram, marker)).status_code == 200
    rows = await settled_rows(pool, telegram, 2, settle_s=0.5)
    edited = [m for m in rows["messages"] if m["message"] != "just text"]
    assert [m["message"] for m in edited] == ["newest text"]
    assert edited[0]["sent_at"] == datetime(2015, 9, 7, 17, 5, 32)  # the original send time


async def test_edit_after_original_updates_text(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    original = tg_payload("text_official.json")
    assert (await post_telegram(gateway, telegram, original)).status_code == 200
    await wait_messages(pool, telegram.tenant_id, 1)
    edit = tg_payload("edited_message.json")
    assert (await post_telegram(gateway, telegram, edit)).status_code == 200
    rows = await wait_first_text_change(pool, telegram, "/start")
    assert [m["message"] for m in rows["messages"]] == ["Edited text"]


async def test_wrong_secret_is_401_and_publishes_nothing(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    before = len(gateway.publisher.published)
    response = await post_telegram(
        gateway, telegram, tg_payload("text_official.json"), secret="not-the-secret"
    )
    missing = await gateway.client.post(
        telegram.path, content=b"{}", headers={"content-type": "application/json"}
    )
    assert (response.status_code, missing.status_code) == (401, 401)
    assert len(gateway.publisher.published) == before
    assert (await tenant_rows(pool, telegram.tenant_id))["messages"] == []


async def test_unknown_channel_is_404(gateway: Gateway, telegram: TenantChannel) -> None:
    unknown = telegram.path.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    wrong_transport = telegram.path.replace("/telegram/", "/whatsapp/")
    for path in (unknown, wrong_transport, "/webhooks/telegram/not-a-uuid"):
        response = await gateway.client.post(
            path,
            content=json.dumps(tg_payload("text_official.json")).encode(),
            headers=telegram_headers(telegram),
        )
        assert response.status_code == 404, path


async def test_channel_post_and_negative_64_bit_ids(
    gateway: Gateway, pool: asyncpg.Pool, telegram: TenantChannel
) -> None:
    response = await post_telegram(gateway, telegram, tg_payload("channel_post.json"))
    assert response.status_code == 200
    rows = await wait_messages(pool, telegram.tenant_id, 1)
    assert rows["clients"][0]["first_name"] == "testChannel"
    assert rows["contacts"][0]["contact_value"] == "-1001961815317"
    assert rows["members"][0]["transport_meta"]["chat_id"] == -1001961815317


async def test_concurrent_consumers_on_a_burst_from_one_new_sender(
    services: ResolvedServices, settings: Settings, gateway: Gateway
) -> None:
    """Two consumer groups (a live consumer and a replay, say) race over the same burst of first
    messages from one new sender: exactly one client, contact, chat and member, no duplicate."""
    first = await isolated_pipeline(services, "race", topic_prefix=settings.topic_prefix + "race.")
    second = first.model_copy(update={"consumer_group": first.consumer_group + "-b"})

    db = await create_pool(first.database_url)
    try:
        channel = await signed_channel(db, "telegram")
        publisher = EventPublisher(first)
        await publisher.start()
        events = []
        for i in range(200):
            update = tg_payload("text_official.json")
            update["update_id"] += i
            update["message"]["message_id"] += i
            update["message"]["text"] = f"burst {i}"
            body = json.dumps(update).encode()
            events += adapter_events(channel, "telegram", telegram_headers(channel), body)
        await publisher.publish(events)
        await publisher.stop()

        async with running_consumer(first), running_consumer(second):
            counts = await eventually(
                lambda: db.fetchrow(
                    """SELECT (SELECT count(*) FROM crm_chat_messages) AS messages,
                              (SELECT count(*) FROM ingest_message_refs) AS refs"""
                ),
                lambda r: r["messages"] >= 200,
                within=60,
            )
            await asyncio.sleep(1.0)  # both groups have the whole burst by now; let them finish
        totals = await db.fetchrow(
            """SELECT (SELECT count(*) FROM crm_clients) AS clients,
                      (SELECT count(*) FROM crm_client_contacts) AS contacts,
                      (SELECT count(*) FROM crm_chats) AS chats,
                      (SELECT count(*) FROM crm_chat_members) AS members,
                      (SELECT count(*) FROM crm_chat_messages) AS messages"""
        )
        assert counts["messages"] == 200
        assert dict(totals) == {
            "clients": 1,
            "contacts": 1,
            "chats": 1,
            "members": 1,
            "messages": 200,
        }
    finally:
        await db.close()
