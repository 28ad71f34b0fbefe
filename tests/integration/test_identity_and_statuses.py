"""Cross-channel identity and delivery statuses, end to end through the real broker and database.

Identity: a sender whose phone or email an existing client of the same tenant already has lands
in that client's chat (never in another tenant's); one person on two transports is one client.
Statuses: logged once, settled forward-only (sent -> sent_at, read -> read_at), and a status that
arrives before its message is applied when the message is stored.

Statuses normally concern *outbound* messages, which the host application stores (crm-ingest
has no provider id for them). To observe settling, these tests address statuses to an *inbound*
message our pipeline stored (provider id X), which the settle query treats the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest

from handlers.store import write_messages
from ingest.events import MessageEvent
from tests.integration.pipeline import OUTBOX_EVENTS, Gateway, TenantChannel, new_channel
from tests.integration.rows import (
    first_conversation,
    logged_statuses,
    message_state,
    settled_rows,
    tenant_rows,
    wait_messages,
)
from tests.integration.signing import (
    adapter_events,
    eml,
    post_email,
    post_sms,
    post_whatsapp,
    signed_channel,
    sms_fields,
    sms_headers,
    wa_headers,
    wa_message,
    wa_raw,
    wa_statuses,
    wa_text,
)
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

PHONE = "+16505551234"  # the sender of Meta's official text sample (wa_id 16505551234)
OFFICIAL_TEXT = "Does it come in another color?"


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def host_client(pool: asyncpg.Pool, tenant_id: uuid.UUID, **columns: str) -> int:
    """A client the host application created (not through crm-ingest)."""
    names = ", ".join(columns)
    marks = ", ".join(f"${i}" for i in range(2, len(columns) + 2))
    client_id: int = await pool.fetchval(
        f"INSERT INTO crm_clients (tenant_id, {names}) VALUES ($1, {marks}) RETURNING id",
        tenant_id,
        *columns.values(),
    )
    return client_id


def sms_from(phone: str, sid: str = "SM00000000000000000000000000000001") -> list[tuple[str, str]]:
    return sms_fields(
        "basic_text", From=phone, MessageSid=sid, SmsMessageSid=sid, SmsSid=sid, Body="via sms"
    )


# --- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "known_by",
    ["phone_number", "phone contact", "whatsapp contact"],
)
async def test_whatsapp_then_sms_from_a_host_clients_phone_land_in_that_clients_chat(
    gateway: Gateway, pool: asyncpg.Pool, known_by: str
) -> None:
    whatsapp = await signed_channel(pool, "whatsapp")
    sms = await signed_channel(pool, "sms", tenant_id=whatsapp.tenant_id)
    tenant = whatsapp.tenant_id
    if known_by == "phone_number":
        client_id = await host_client(pool, tenant, first_name="Sheena", phone_number=PHONE)
        host_contacts: list[tuple[str, str]] = []
    else:
        client_id = await host_client(pool, tenant, first_name="Sheena")
        host_contacts = [(known_by.split()[0], PHONE)]
        await pool.execute(
            "INSERT INTO crm_client_contacts (client_id, contact_type, contact_value)"
            " VALUES ($1, $2, $3)",
            client_id,
            *host_contacts[0],
        )

    assert (await post_whatsapp(gateway, whatsapp, wa_raw("text_official.json"))).status_code == 200
    rows = await wait_messages(pool, tenant, 1)
    [client], [chat] = rows["clients"], rows["chats"]
    assert (client["id"], client["first_name"]) == (client_id, "Sheena")  # no new client
    assert chat["client_id"] == client_id
    assert [m["chat_id"] for m in rows["messages"]] == [chat["id"]]
    # The host's whatsapp contact is reused; otherwise a whatsapp contact is added.
    assert sorted((c["contact_type"], c["contact_value"]) for c in rows["contacts"]) == sorted(
        {*host_contacts, ("whatsapp", PHONE)}
    )
    assert {c["client_id"] for c in rows["contacts"]} == {client_id}

    assert (await post_sms(gateway, sms, sms_from(PHONE))).status_code == 200
    rows = await wait_messages(pool, tenant, 2)
    assert [c["id"] for c in rows["clients"]] == [client_id]
    assert [c["id"] for c in rows["chats"]] == [chat["id"]]
    assert [(m["chat_id"], m["message"]) for m in rows["messages"]] == [
        (chat["id"], OFFICIAL_TEXT),
        (chat["id"], "via sms"),
    ]
    assert sorted((c["contact_type"], c["contact_value"]) for c in rows["contacts"]) == sorted(
        {*host_contacts, ("whatsapp", PHONE), ("phone", PHONE)}
    )
    assert sorted((m["transport"], m["chat_id"], m["client_id"]) for m in rows["members"]) == [
        ("sms", chat["id"], client_id),
        ("whatsapp", chat["id"], client_id),
    ]
    by_transport = {m["transport"]: m["id"] for m in rows["members"]}
    assert [m["sender_id"] for m in rows["messages"]] == [
        by_transport["whatsapp"],
        by_transport["sms"],
    ]


async def test_email_from_a_host_clients_address_lands_in_that_clients_chat(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    email = await new_channel(pool, "email")
    # Stored with other capitals than the From header (Maria.K@Example.NET): compared lower-case.
    client_id = await host_client(
        pool, email.tenant_id, first_name="Maria", email="maria.K@example.net"
    )
    assert (await post_email(gateway, email, eml("plain"))).status_code == 200

    client, contact, chat, member, _, _ = await first_conversation(pool, email.tenant_id)
    assert (client["id"], client["first_name"], client["email"]) == (
        client_id,
        "Maria",
        "maria.K@example.net",
    )
    assert (contact["client_id"], contact["contact_type"], contact["contact_value"]) == (
        client_id,
        "email",
        "maria.k@example.net",
    )
    assert (chat["client_id"], member["transport"]) == (client_id, "email")


async def test_same_phone_in_two_tenants_is_two_clients(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    first = await signed_channel(pool, "whatsapp")
    second = await signed_channel(pool, "whatsapp")
    host = await host_client(pool, first.tenant_id, first_name="Sheena", phone_number=PHONE)
    for channel in (first, second):
        assert (
            await post_whatsapp(gateway, channel, wa_raw("text_official.json"))
        ).status_code == 200

    one = await wait_messages(pool, first.tenant_id, 1)
    two = await wait_messages(pool, second.tenant_id, 1)
    assert [(c["id"], c["phone_number"]) for c in one["clients"]] == [(host, PHONE)]
    [other] = two["clients"]
    assert (other["phone_number"], other["first_name"]) == (PHONE, "Sheena Nelson")
    assert other["id"] != host
    assert [c["client_id"] for c in one["chats"]] == [host]
    assert [c["client_id"] for c in two["chats"]] == [other["id"]]
    assert [c["client_id"] for c in one["contacts"]] == [host]
    assert [c["client_id"] for c in two["contacts"]] == [other["id"]]
    assert [m["chat_id"] for m in two["messages"]] == [two["chats"][0]["id"]]
    # The tenant-less lookups went through the clients of each tenant only.
    total = await pool.fetchval(
        "SELECT count(*) FROM crm_clients WHERE tenant_id = ANY($1::uuid[])",
        [first.tenant_id, second.tenant_id],
    )
    assert total == 2


async def test_whatsapp_and_sms_from_one_new_number_in_one_batch_are_one_client(
    pool: asyncpg.Pool,
) -> None:
    """The batch writer itself (deterministic: both events in one write), on real PostgreSQL."""
    whatsapp = await signed_channel(pool, "whatsapp")
    sms = await signed_channel(pool, "sms", tenant_id=whatsapp.tenant_id)
    body = wa_raw("text_official.json")
    params = sms_from(PHONE)
    events = adapter_events(whatsapp, "whatsapp", wa_headers(body), body)
    events += adapter_events(sms, "sms", sms_headers(sms, params), urlencode(params).encode())
    assert len(events) == 2
    assert all(isinstance(e, MessageEvent) for e in events)

    async with pool.acquire() as conn, conn.transaction():
        outcome = await write_messages(conn, events)
    assert (outcome.messages_created, outcome.clients_created, outcome.chats_created) == (2, 1, 1)

    rows = await tenant_rows(pool, whatsapp.tenant_id)
    [client], [chat] = rows["clients"], rows["chats"]
    assert (client["phone_number"], client["first_name"]) == (PHONE, "Sheena Nelson")
    assert sorted((c["client_id"], c["contact_type"]) for c in rows["contacts"]) == [
        (client["id"], "phone"),
        (client["id"], "whatsapp"),
    ]
    assert sorted(m["transport"] for m in rows["members"]) == ["sms", "whatsapp"]
    assert {m["chat_id"] for m in rows["messages"]} == {chat["id"]}


async def test_whatsapp_and_sms_from_one_new_number_at_once_are_one_client(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    """The same through the gateway and the consumer, both requests in flight together: one
    batch or two, racing or not, the unique (tenant, phone) index must not fail a message."""
    whatsapp = await signed_channel(pool, "whatsapp")
    sms = await signed_channel(pool, "sms", tenant_id=whatsapp.tenant_id)
    responses = await asyncio.gather(
        post_whatsapp(gateway, whatsapp, wa_raw("text_official.json")),
        post_sms(gateway, sms, sms_from(PHONE)),
    )
    assert [r.status_code for r in responses] == [200, 200]

    rows = await wait_messages(pool, whatsapp.tenant_id, 2)
    [client], [chat] = rows["clients"], rows["chats"]
    assert client["phone_number"] == PHONE
    assert sorted(m["message"] for m in rows["messages"]) == [OFFICIAL_TEXT, "via sms"]
    assert {m["chat_id"] for m in rows["messages"]} == {chat["id"]}
    assert sorted((m["transport"], m["client_id"]) for m in rows["members"]) == [
        ("sms", client["id"]),
        ("whatsapp", client["id"]),
    ]


# --- WhatsApp statuses ------------------------------------------------------------------------

TARGET = "wamid.status-target"
T0 = 1_700_000_000
SENDER = "972987654321"


def target_message(wamid: str = TARGET, timestamp: int = T0, text: str = "hello") -> dict[str, Any]:
    return wa_message(wa_text(text, wamid=wamid, timestamp=timestamp, sender=SENDER))


def status(kind: str, at: int, wamid: str = TARGET) -> dict[str, Any]:
    # recipient_id = the customer: the status shares the conversation's partition.
    return {"id": wamid, "status": kind, "timestamp": str(at), "recipient_id": SENDER}


async def settled(pool: asyncpg.Pool, channel: TenantChannel, count: int) -> Any:
    """The target's state once `count` statuses of the channel are logged (the log and the
    settling are written in one transaction)."""
    await eventually(lambda: logged_statuses(pool, channel), lambda s: len(s) >= count)
    return await message_state(pool, channel, TARGET)


async def test_statuses_in_order_set_sent_at_then_read_at(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, target_message())).status_code == 200
    await wait_messages(pool, whatsapp.tenant_id, 1)

    for_sent = await post_whatsapp(gateway, whatsapp, wa_statuses(status("sent", T0 + 100)))
    assert for_sent.status_code == 200
    state = await settled(pool, whatsapp, 1)
    assert (state["sent_at"], state["read_at"], state["status_rank"]) == (utc(T0 + 100), None, 1)

    for_delivered = await post_whatsapp(
        gateway, whatsapp, wa_statuses(status("delivered", T0 + 200))
    )
    assert for_delivered.status_code == 200
    state = await settled(pool, whatsapp, 2)
    assert (state["sent_at"], state["read_at"], state["status_rank"]) == (utc(T0 + 100), None, 2)

    for_read = await post_whatsapp(gateway, whatsapp, wa_statuses(status("read", T0 + 300)))
    assert for_read.status_code == 200
    state = await settled(pool, whatsapp, 3)
    assert (state["sent_at"], state["read_at"], state["status_rank"]) == (
        utc(T0 + 100),
        utc(T0 + 300),
        3,
    )


async def test_out_of_order_statuses_never_move_backwards(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, target_message())).status_code == 200
    await wait_messages(pool, whatsapp.tenant_id, 1)

    # read first, then delivered and sent with older timestamps, each in its own request
    for n, (kind, at) in enumerate((("read", 300), ("delivered", 200), ("sent", 100)), 1):
        response = await post_whatsapp(gateway, whatsapp, wa_statuses(status(kind, T0 + at)))
        assert response.status_code == 200
        state = await settled(pool, whatsapp, n)
        assert (state["sent_at"], state["read_at"]) == (utc(T0), utc(T0 + 300)), kind
        assert (state["status_rank"], state["status_at"]) == (3, utc(T0 + 300)), kind

    # A higher rank (failed) with a timestamp older than the stored read changes nothing.
    failed = await post_whatsapp(gateway, whatsapp, wa_statuses(status("failed", T0 + 50)))
    assert failed.status_code == 200
    state = await settled(pool, whatsapp, 4)
    assert (state["sent_at"], state["read_at"]) == (utc(T0), utc(T0 + 300))
    assert (state["status_rank"], state["status_at"]) == (3, utc(T0 + 300))
    assert await logged_statuses(pool, whatsapp) == [
        (TARGET, "sent"),
        (TARGET, "delivered"),
        (TARGET, "read"),
        (TARGET, "failed"),
    ]


async def test_status_before_its_message_is_applied_when_the_message_arrives(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    response = await post_whatsapp(
        gateway, whatsapp, wa_statuses(status("delivered", T0 + 200), status("read", T0 + 300))
    )
    assert response.status_code == 200
    await eventually(lambda: logged_statuses(pool, whatsapp), lambda s: len(s) == 2)
    assert await message_state(pool, whatsapp, TARGET) is None  # waiting in the log

    assert (await post_whatsapp(gateway, whatsapp, target_message())).status_code == 200
    rows = await wait_messages(pool, whatsapp.tenant_id, 1)
    [message] = rows["messages"]
    assert (message["message"], message["sent_at"], message["read_at"]) == (
        "hello",
        utc(T0),
        utc(T0 + 300),
    )
    state = await message_state(pool, whatsapp, TARGET)
    assert (state["status_rank"], state["status_at"]) == (3, utc(T0 + 300))


async def test_statuses_before_their_message_settle_like_statuses_after_it(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    statuses = wa_statuses(status("sent", T0 + 100), status("read", T0 + 300))
    assert (await post_whatsapp(gateway, whatsapp, statuses)).status_code == 200
    await eventually(lambda: logged_statuses(pool, whatsapp), lambda s: len(s) == 2)
    assert (await post_whatsapp(gateway, whatsapp, target_message())).status_code == 200
    await wait_messages(pool, whatsapp.tenant_id, 1)
    state = await message_state(pool, whatsapp, TARGET)
    # What test_statuses_in_order_set_sent_at_then_read_at stores for sent then read.
    assert (state["sent_at"], state["read_at"]) == (utc(T0 + 100), utc(T0 + 300))


async def test_duplicate_status_changes_nothing(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, target_message())).status_code == 200
    read = wa_statuses(status("read", T0 + 300))
    assert (await post_whatsapp(gateway, whatsapp, read)).status_code == 200
    before = await settled(pool, whatsapp, 1)
    assert before["read_at"] == utc(T0 + 300)
    updates = f"""SELECT count(*) FROM ({OUTBOX_EVENTS}) AS q
                  WHERE event->>'event_type' = 'message.updated'
                    AND (event->>'message_id')::int = $1"""
    assert await pool.fetchval(updates, before["id"]) == 1

    assert (await post_whatsapp(gateway, whatsapp, read)).status_code == 200
    # A later message of the same sender: stored only after the duplicate was consumed.
    later = target_message("wamid.later", T0 + 400, "later")
    assert (await post_whatsapp(gateway, whatsapp, later)).status_code == 200
    await settled_rows(pool, whatsapp, 2)

    assert await message_state(pool, whatsapp, TARGET) == before
    assert await logged_statuses(pool, whatsapp) == [(TARGET, "read")]
    assert await pool.fetchval(updates, before["id"]) == 1


# --- Twilio status callbacks ------------------------------------------------------------------

SMS_SID = "SM50593ec6f8a4a96563d9d6817a90c42f"  # basic_text.form, and the status samples


def callback(kind: str) -> list[tuple[str, str]]:
    return sms_fields("status_delivered", MessageStatus=kind, SmsStatus=kind)


async def test_twilio_status_callbacks_settle_forward_only(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    sms = await signed_channel(pool, "sms")
    assert (await post_sms(gateway, sms, sms_fields("basic_text"))).status_code == 200
    await wait_messages(pool, sms.tenant_id, 1)

    async def state_after(params: list[tuple[str, str]], logged: int) -> Any:
        response = await post_sms(gateway, sms, params)
        assert response.status_code == 200, response.text
        await eventually(lambda: logged_statuses(pool, sms), lambda s: len(s) >= logged)
        return await message_state(pool, sms, SMS_SID)

    # Twilio's callbacks carry no timestamp: the gateway's receive time is the status time.
    started = naive_now()
    sent = await state_after(callback("sent"), 1)
    assert started <= sent["sent_at"] <= naive_now()
    assert (sent["read_at"], sent["status_rank"]) == (None, 1)

    delivered = await state_after(sms_fields("status_delivered"), 2)
    assert (delivered["sent_at"], delivered["read_at"], delivered["status_rank"]) == (
        sent["sent_at"],
        None,
        2,
    )
    read_started = naive_now()
    read = await state_after(callback("read"), 3)  # Twilio's WhatsApp read receipts
    assert read["sent_at"] == sent["sent_at"]
    assert read_started <= read["read_at"] <= naive_now()
    assert read["status_rank"] == 3

    # undelivered is `failed`: ranks above read, but moves neither sent_at nor read_at.
    failed = await state_after(sms_fields("status_undelivered"), 4)
    assert (failed["sent_at"], failed["read_at"], failed["status_rank"]) == (
        sent["sent_at"],
        read["read_at"],
        4,
    )
    assert await logged_statuses(pool, sms) == [
        (SMS_SID, "sent"),
        (SMS_SID, "delivered"),
        (SMS_SID, "read"),
        (SMS_SID, "failed"),
    ]
    # A redelivered callback is a no-op; a later inbound SMS of the customer (same partition)
    # is stored only after it was consumed.
    assert (await post_sms(gateway, sms, sms_fields("status_delivered"))).status_code == 200
    assert (await post_sms(gateway, sms, sms_from("+18017916516"))).status_code == 200
    await settled_rows(pool, sms, 2)
    assert await message_state(pool, sms, SMS_SID) == failed
    assert len(await logged_statuses(pool, sms)) == 4


async def test_twilio_intermediate_status_is_acknowledged_and_not_published(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    sms = await signed_channel(pool, "sms")
    before = len(gateway.publisher.published)
    response = await post_sms(gateway, sms, callback("queued"))
    assert response.status_code == 200
    assert len(gateway.publisher.published) == before
