"""Identity over time (issue 15), end to end through the real broker and database.

- A name crm-ingest made up (a number, a username) gives way to the first real name any
  transport of the client brings; a newer name from that transport follows; a name the host
  set stays.
- A WhatsApp sender's phone and business-scoped user id reach one client; when each already
  belongs to a different client, nothing is merged and the conflict is recorded and announced.
- Replaying the whole history changes no row and queues no chat event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest

from handlers.app import running_consumer
from handlers.identities import LostRace
from handlers.replay import Range, replay_topic
from handlers.store import write_messages
from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.events import MessageEvent
from ingest.publisher import EventPublisher
from ingest.transports.base import Event
from tests.integration.pipeline import (
    OUTBOX_EVENTS,
    Gateway,
    TenantChannel,
    pipeline_and_pool,
    read_topic,
)
from tests.integration.rows import CRM_TABLES, table_hashes, tenant_rows, wait_messages
from tests.integration.signing import (
    adapter_events,
    post_sms,
    post_whatsapp,
    signed_channel,
    sms_fields,
    sms_headers,
    wa_body,
    wa_headers,
    wa_message,
    wa_raw,
    wa_text,
)

pytestmark = pytest.mark.integration

PHONE = "+16505551234"  # the sender of Meta's official text sample, "Sheena Nelson"
DIGITS = PHONE[1:]
T0 = 1_760_000_000  # after the official sample's timestamp
INGEST_TABLES = (*CRM_TABLES, "ingest_client_names", "ingest_identity_conflicts")


def sms_from(phone: str, sid: str) -> list[tuple[str, str]]:
    return sms_fields(
        "basic_text", From=phone, MessageSid=sid, SmsMessageSid=sid, SmsSid=sid, Body="via sms"
    )


def wa_from(
    text: str,
    at: int,
    *,
    phone: str | None = DIGITS,
    user_id: str | None = None,
    name: str | None = None,
    username: str | None = None,
) -> dict[str, Any]:
    """A WhatsApp text from `phone` (digits) and/or `user_id`, named in its contact."""
    profile = {k: v for k, v in (("name", name), ("username", username)) if v}
    contact = {k: v for k, v in (("wa_id", phone), ("user_id", user_id)) if v}
    sender = {"sender": phone, "sender_field": "from"} if phone else {}
    if not phone:
        sender = {"sender": user_id, "sender_field": "from_user_id"}
    element = wa_text(text, wamid=f"wamid.{uuid.uuid4().hex}", timestamp=at, **sender)
    return wa_message(element, contact={**contact, "profile": profile})


async def chat_events(pool: asyncpg.Pool, tenant_id: uuid.UUID, kind: str) -> list[Any]:
    """The tenant's queued chat events of one type, oldest first."""
    return [
        r["event"]
        for r in await pool.fetch(OUTBOX_EVENTS)
        if r["event"]["tenant_id"] == str(tenant_id) and r["event"]["event_type"] == kind
    ]


async def clients(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> list[asyncpg.Record]:
    return (await tenant_rows(pool, tenant_id))["clients"]


# --- names --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("consumer")
async def test_sms_then_whatsapp_profile_names_the_one_client(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    sms = await signed_channel(pool, "sms")
    whatsapp = await signed_channel(pool, "whatsapp", tenant_id=sms.tenant_id)
    tenant = sms.tenant_id
    assert (await post_sms(gateway, sms, sms_from(PHONE, "SM" + "1" * 32))).status_code == 200
    rows = await wait_messages(pool, tenant, 1)
    assert [c["first_name"] for c in rows["clients"]] == [PHONE]  # SMS carries no name

    assert (await post_whatsapp(gateway, whatsapp, wa_raw("text_official.json"))).status_code == 200
    rows = await wait_messages(pool, tenant, 2)
    [client] = rows["clients"]
    assert (client["first_name"], client["last_name"], client["phone_number"]) == (
        "Sheena Nelson",
        None,
        PHONE,
    )
    assert {m["chat_id"] for m in rows["messages"]} == {rows["chats"][0]["id"]}
    [updated] = await chat_events(pool, tenant, "client.updated")
    assert (updated["client_id"], updated["chat_id"]) == (client["id"], rows["chats"][0]["id"])
    assert updated["changes"] == [{"field": "first_name", "old": PHONE, "new": "Sheena Nelson"}]
    # The SMS sender's next message brings no name, and changes none.
    assert (await post_sms(gateway, sms, sms_from(PHONE, "SM" + "2" * 32))).status_code == 200
    await wait_messages(pool, tenant, 3)
    assert [c["first_name"] for c in await clients(pool, tenant)] == ["Sheena Nelson"]
    assert len(await chat_events(pool, tenant, "client.updated")) == 1


@pytest.mark.usefixtures("consumer")
async def test_a_newer_profile_name_follows_until_the_host_renames_the_client(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    whatsapp = await signed_channel(pool, "whatsapp")
    tenant = whatsapp.tenant_id
    for n, name in enumerate(["Sheena", "Sheena Nelson"]):
        body = wa_from(f"m{n}", T0 + n, name=name)
        assert (await post_whatsapp(gateway, whatsapp, body)).status_code == 200
        await wait_messages(pool, tenant, n + 1)
    [client] = await clients(pool, tenant)
    assert client["first_name"] == "Sheena Nelson"  # the same transport's newer name
    assert [e["changes"] for e in await chat_events(pool, tenant, "client.updated")] == [
        [{"field": "first_name", "old": "Sheena", "new": "Sheena Nelson"}]
    ]

    await pool.execute(
        "UPDATE crm_clients SET first_name = 'VIP Sheena' WHERE id = $1", client["id"]
    )
    body = wa_from("m2", T0 + 2, name="Sheena N.")
    assert (await post_whatsapp(gateway, whatsapp, body)).status_code == 200
    await wait_messages(pool, tenant, 3)
    [client] = await clients(pool, tenant)
    assert (client["first_name"], client["last_name"]) == ("VIP Sheena", None)
    assert len(await chat_events(pool, tenant, "client.updated")) == 1


# --- WhatsApp user ids --------------------------------------------------------------------------


@pytest.mark.usefixtures("consumer")
async def test_username_only_then_the_same_user_with_phone_is_one_client(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    whatsapp = await signed_channel(pool, "whatsapp")
    tenant = whatsapp.tenant_id
    user_id = "US.100000000000000001"
    first = wa_from("hi", T0, phone=None, user_id=user_id, username="@sheena")
    assert (await post_whatsapp(gateway, whatsapp, first)).status_code == 200
    rows = await wait_messages(pool, tenant, 1)
    assert [(c["first_name"], c["phone_number"]) for c in rows["clients"]] == [("@sheena", None)]

    second = wa_from("me again", T0 + 1, user_id=user_id, name="Sheena Nelson", username="@sheena")
    assert (await post_whatsapp(gateway, whatsapp, second)).status_code == 200
    third = wa_from("and again", T0 + 2, phone=None, user_id=user_id, username="@sheena")
    assert (await post_whatsapp(gateway, whatsapp, third)).status_code == 200
    rows = await wait_messages(pool, tenant, 3)
    [client], [chat] = rows["clients"], rows["chats"]
    assert client["first_name"] == "Sheena Nelson"  # the profile name replaced the username
    assert client["phone_number"] == PHONE  # the client had none
    updates = await chat_events(pool, tenant, "client.updated")
    assert sorted((c for e in updates for c in e["changes"]), key=lambda c: c["field"]) == [
        {"field": "first_name", "old": "@sheena", "new": "Sheena Nelson"},
        {"field": "phone_number", "old": None, "new": PHONE},
    ]
    assert [m["chat_id"] for m in rows["messages"]] == [chat["id"]] * 3
    assert sorted((c["contact_type"], c["contact_value"]) for c in rows["contacts"]) == [
        ("whatsapp", PHONE),
        ("whatsapp", user_id),
    ]
    assert {c["client_id"] for c in rows["contacts"]} == {client["id"]}
    identities = await pool.fetch(
        "SELECT contact_value, client_id FROM ingest_identities WHERE tenant_id = $1"
        " ORDER BY contact_value",
        tenant,
    )
    assert [(r["contact_value"], r["client_id"]) for r in identities] == [
        (PHONE, client["id"]),
        (user_id, client["id"]),
    ]
    assert await chat_events(pool, tenant, "client.identity_conflict") == []


@pytest.mark.usefixtures("consumer")
async def test_phone_and_user_id_of_two_clients_are_recorded_not_merged(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    sms = await signed_channel(pool, "sms")
    whatsapp = await signed_channel(pool, "whatsapp", tenant_id=sms.tenant_id)
    tenant, user_id = sms.tenant_id, "US.100000000000000002"
    assert (await post_sms(gateway, sms, sms_from(PHONE, "SM" + "3" * 32))).status_code == 200
    username_only = wa_from("hi", T0, phone=None, user_id=user_id, name="Ann")
    assert (await post_whatsapp(gateway, whatsapp, username_only)).status_code == 200
    rows = await wait_messages(pool, tenant, 2)
    by_phone, by_user = sorted(rows["clients"], key=lambda c: c["phone_number"] is None)
    assert (by_phone["phone_number"], by_user["first_name"]) == (PHONE, "Ann")

    for n in range(2):  # the same sender twice: one record, one announcement
        both = wa_from(f"both {n}", T0 + 1 + n, user_id=user_id, name="Ann")
        assert (await post_whatsapp(gateway, whatsapp, both)).status_code == 200
    rows = await wait_messages(pool, tenant, 4)
    assert sorted(c["id"] for c in rows["clients"]) == sorted([by_phone["id"], by_user["id"]])
    chat_of = {c["client_id"]: c["id"] for c in rows["chats"]}
    # Filed under the phone's client, as before the user id was known.
    assert sorted(m["chat_id"] for m in rows["messages"]) == sorted(
        [chat_of[by_phone["id"]]] * 3 + [chat_of[by_user["id"]]]
    )
    conflicts = await pool.fetch(
        "SELECT contact_type, contact_value, linked_value, client_id, linked_client_id"
        " FROM ingest_identity_conflicts WHERE tenant_id = $1",
        tenant,
    )
    assert [tuple(r.values()) for r in conflicts] == [
        ("whatsapp", PHONE, user_id, by_phone["id"], by_user["id"])
    ]
    [announced] = await chat_events(pool, tenant, "client.identity_conflict")
    assert (announced["client_id"], announced["chat_id"]) == (
        by_phone["id"],
        chat_of[by_phone["id"]],
    )
    assert (announced["contact_value"], announced["linked_value"]) == (PHONE, user_id)
    assert announced["linked_client_id"] == by_user["id"]


# --- two consumers at once ---------------------------------------------------------------------


async def write_in_background(pool: asyncpg.Pool, events: list[Event]) -> tuple[Any, Any]:
    """Start writing `events` in a transaction of its own; returns (task, connection) once the
    write is underway (the caller finds it blocked on a lock, or finished)."""
    conn = await pool.acquire()
    transaction = conn.transaction()
    await transaction.start()
    messages = [e for e in events if isinstance(e, MessageEvent)]
    task = asyncio.ensure_future(write_messages(conn, messages))
    await asyncio.sleep(0.5)
    return task, (conn, transaction)


async def test_two_consumers_linking_one_user_make_one_client(pool: asyncpg.Pool) -> None:
    """One consumer stores a username-only message (not yet committed) while another stores
    the same user's message with phone: the second waits, loses the user id's claim, and its
    retry (what the ingestor does on LostRace) files both under one client."""
    whatsapp = await signed_channel(pool, "whatsapp")
    user_id = "US.100000000000000005"
    [username_only] = whatsapp_events(whatsapp, wa_from("a", T0, phone=None, user_id=user_id))
    [with_phone] = whatsapp_events(whatsapp, wa_from("b", T0 + 1, user_id=user_id, name="Ann"))
    assert isinstance(username_only, MessageEvent)
    assert isinstance(with_phone, MessageEvent)

    first = await pool.acquire()
    try:
        async with first.transaction():
            await write_messages(first, [username_only])
            second, (conn, transaction) = await write_in_background(pool, [with_phone])
            assert not second.done()  # waiting for the first consumer's claim of the user id
        with pytest.raises(LostRace):
            await second
        await transaction.rollback()
        async with conn.transaction():  # the retry
            await write_messages(conn, [with_phone])
        await pool.release(conn)
    finally:
        await pool.release(first)

    rows = await tenant_rows(pool, whatsapp.tenant_id)
    [client], [chat] = rows["clients"], rows["chats"]
    assert client["first_name"] == "Ann"
    assert sorted(c["contact_value"] for c in rows["contacts"]) == [PHONE, user_id]
    assert [m["chat_id"] for m in rows["messages"]] == [chat["id"]] * 2


async def test_two_consumers_naming_one_client_rename_it_once(pool: asyncpg.Pool) -> None:
    """WhatsApp and a Twilio profile name the same SMS client at once: the first rename
    commits, the second sees the name is no longer the one crm-ingest wrote and keeps it."""
    sms = await signed_channel(pool, "sms")
    whatsapp = await signed_channel(pool, "whatsapp", tenant_id=sms.tenant_id)
    tenant = sms.tenant_id

    def sms_events(params: list[tuple[str, str]]) -> list[Event]:
        return adapter_events(sms, "sms", sms_headers(sms, params), urlencode(params).encode())

    placeholder = sms_events(sms_from(PHONE, "SM" + "5" * 32))
    profile = sms_events(sms_fields("basic_text", From=PHONE, MessageSid="SM" + "6" * 32,
                                    ProfileName="Sheena N."))  # fmt: skip
    named = whatsapp_events(whatsapp, wa_from("a", T0, name="Sheena Nelson"))
    async with pool.acquire() as conn, conn.transaction():
        await write_messages(conn, [e for e in placeholder if isinstance(e, MessageEvent)])

    first = await pool.acquire()
    try:
        async with first.transaction():
            renamed = await write_messages(first, [e for e in named if isinstance(e, MessageEvent)])
            second, (conn, transaction) = await write_in_background(pool, profile)
            assert not second.done()  # waiting for the client row the first one renamed
        outcome = await second
        await transaction.commit()
        await pool.release(conn)
    finally:
        await pool.release(first)

    [client] = await clients(pool, tenant)
    assert client["first_name"] == "Sheena Nelson"
    kinds = [e["event_type"] for e, _ in renamed.chat_events + outcome.chat_events]
    assert kinds.count("client.updated") == 1
    assert outcome.messages_created == 1


# --- replay -------------------------------------------------------------------------------------


@pytest.fixture
async def history(services: ResolvedServices) -> AsyncIterator[tuple[Settings, asyncpg.Pool]]:
    """A pipeline of its own, so that replaying its whole topics replays only this history."""
    async with pipeline_and_pool(services, "identity", outbox_interval_s=0.2) as pipeline:
        yield pipeline


def whatsapp_events(channel: TenantChannel, body: dict[str, Any]) -> list[Event]:
    data = wa_body(body)
    return adapter_events(channel, "whatsapp", wa_headers(data), data)


async def test_replaying_the_whole_history_changes_nothing(
    history: tuple[Settings, asyncpg.Pool],
) -> None:
    settings, pool = history
    sms = await signed_channel(pool, "sms")
    whatsapp = await signed_channel(pool, "whatsapp", tenant_id=sms.tenant_id)
    tenant, user_id, other_user = sms.tenant_id, "US.100000000000000003", "US.100000000000000004"
    params = sms_from(PHONE, "SM" + "4" * 32)
    steps: list[list[Event]] = [
        adapter_events(sms, "sms", sms_headers(sms, params), urlencode(params).encode()),
        whatsapp_events(whatsapp, wa_from("a", T0, name="Sheena")),  # names the SMS client
        whatsapp_events(whatsapp, wa_from("b", T0 + 1, name="Sheena Nelson")),
        whatsapp_events(whatsapp, wa_from("c", T0 + 2, user_id=user_id, name="Sheena Nelson")),
        whatsapp_events(whatsapp, wa_from("d", T0 + 3, phone=None, user_id=other_user, name="X")),
        # A new phone joins the client of its user id ...
        whatsapp_events(
            whatsapp, wa_from("e", T0 + 4, phone="16505550000", user_id=other_user, name="X")
        ),
        # ... and a known phone with another client's user id is a conflict.
        whatsapp_events(whatsapp, wa_from("f", T0 + 5, user_id=other_user, name="Sheena Nelson")),
    ]
    publisher = EventPublisher(settings)
    await publisher.start()
    try:
        async with running_consumer(settings):
            for n, events in enumerate(steps, start=1):  # in order: one batch after another
                await publisher.publish(events)
                rows = await wait_messages(pool, tenant, n)
                assert len(rows["messages"]) == n
            await asyncio.sleep(0.5)  # the relay sweep runs every 0.2 s
    finally:
        await publisher.stop()
    [named, other] = await clients(pool, tenant)
    assert (named["first_name"], other["first_name"]) == ("Sheena Nelson", "X")
    assert other["phone_number"] == "+16505550000"  # the phone its user id was linked to
    assert (
        await pool.fetchval(
            "SELECT count(DISTINCT client_id) FROM ingest_identities WHERE contact_value = ANY($1)",
            ["+16505550000", other_user],
        )
        == 1
    )
    assert await pool.fetchval("SELECT count(*) FROM ingest_identity_conflicts") == 1
    # An older WhatsApp name must never come back; the host's later rename must stay.
    await pool.execute("UPDATE crm_clients SET last_name = 'Host' WHERE id = $1", other["id"])

    before = await table_hashes(pool, INGEST_TABLES)
    outbox_before = await pool.fetch(OUTBOX_EVENTS)
    for transport in ("sms", "whatsapp"):
        topic = settings.inbound_topic(transport)
        summary = await replay_topic(settings, topic, Range(from_offset=0), idle_timeout_s=2.0)
        assert (summary.read, summary.applied) == (1 if transport == "sms" else 6, 0)
    # One record at a time as well: an old name alone in its batch must not win either.
    topic = settings.inbound_topic("whatsapp")
    for record in await read_topic(settings.kafka_bootstrap_servers, topic, idle_s=1.0):
        one = Range(from_offset=record.offset, to_offset=record.offset, partition=record.partition)
        assert (await replay_topic(settings, topic, one, idle_timeout_s=2.0)).read == 1
    assert await table_hashes(pool, INGEST_TABLES) == before
    assert await pool.fetch(OUTBOX_EVENTS) == outbox_before
    updated = [r["event"]["event_type"] for r in outbox_before]
    assert updated.count("client.updated") == 3  # two names, one phone
    assert updated.count("client.identity_conflict") == 1
