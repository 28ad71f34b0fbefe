"""WhatsApp Cloud API webhook -> gateway -> real broker -> consumer -> real PostgreSQL.

Every message type lands as a message of the sender's chat; a batch is stored whole and once;
the handshake and the phone_number_id check work over HTTP. Payloads: tests/payloads/whatsapp
(see its SOURCES.md); `video`, `sticker` and plain `audio` have no fixture there and are built
here from the media object shape of the other media samples.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.integration.pipeline import Gateway, TenantChannel
from tests.integration.rows import (
    first_conversation,
    logged_statuses,
    tenant_counts,
    tenant_rows,
    wait_first_text_change,
    wait_messages,
)
from tests.integration.signing import (
    post_whatsapp,
    signed_channel,
    wa_element,
    wa_message,
    wa_payload,
    wa_raw,
    wa_text,
)
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

PHONE_NUMBER_ID = "106540352242922"
BUSINESS = {
    "phone_number_id": PHONE_NUMBER_ID,
    "waba_id": "102290129340398",
    "display_phone_number": "15550783881",
}
# The sender of the pywa-based fixtures: wa_id 972987654321 with the newer user ids.
PYWA_MEMBER = {
    "wa_id": "972987654321",
    "user_id": "US.13491208655302741918",
    "parent_user_id": "US.ENT.11815799212886844830",
    "phone": "+972987654321",
    **BUSINESS,
}


def utc(seconds: int) -> datetime:
    """The seed's TIMESTAMP columns hold naive UTC wall time."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def media_message(kind: str, media: dict[str, Any], timestamp: int = 1697043500) -> dict[str, Any]:
    return wa_message(wa_element(kind, media, wamid=f"wamid.{kind}1", timestamp=timestamp))


@dataclass
class Case:
    body: Callable[[], bytes | dict[str, Any]]
    text: str
    sent_at: int
    # core_uploads (path, mimetype, name, hash) of each attachment, in order
    attachments: list[tuple[str, str, str, str]] = field(default_factory=list)


def fixture(name: str) -> Callable[[], bytes]:
    return lambda: wa_raw(name)


CASES = {
    "image": Case(
        fixture("image_url.json"),
        "[image]",
        1697043379,
        [("whatsapp:65463453", "image/jpeg", "image", "4654+8g=")],
    ),
    "video": Case(
        lambda: media_message(
            "video",
            {
                "caption": "Unboxing",
                "mime_type": "video/mp4",
                "sha256": "dmlkZW8tc2hhMjU2",
                "id": "1166846181421424",
            },
        ),
        "Unboxing",
        1697043500,
        [("whatsapp:1166846181421424", "video/mp4", "video", "dmlkZW8tc2hhMjU2")],
    ),
    "voice": Case(
        fixture("voice.json"),
        "[voice message]",
        1697043473,
        [
            (
                "whatsapp:1234567890987654321",
                "audio/ogg; codecs=opus",
                "voice",
                "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
            )
        ],
    ),
    "audio": Case(
        lambda: media_message(
            "audio", {"mime_type": "audio/mpeg", "sha256": "YXVkaW8=", "id": "5550001"}
        ),
        "[audio]",
        1697043500,
        [("whatsapp:5550001", "audio/mpeg", "audio", "YXVkaW8=")],
    ),
    "document": Case(
        fixture("document_forwarded.json"),
        "caption",
        1697043666,
        [
            (
                "whatsapp:1234567890987654321",
                "application/pdf",
                "filename.pdf",
                "grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY=",
            )
        ],
    ),
    "sticker": Case(
        lambda: media_message(
            "sticker",
            {
                "mime_type": "image/webp",
                "sha256": "c3RpY2tlcg==",
                "id": "7770001",
                "animated": False,
            },
        ),
        "[sticker]",
        1697043500,
        [("whatsapp:7770001", "image/webp", "sticker", "c3RpY2tlcg==")],
    ),
    "location": Case(fixture("location.json"), "Location: 12.25089, 43.90539", 1697044557),
    "location_named": Case(
        fixture("location_named.json"),
        "Location: 37.4611978, -122.2164385 (Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025)",
        1697044557,
    ),
    "contacts": Case(
        fixture("contacts.json"),
        "Contact: Chandler Bing, +1 555-555-5555\nContact: Monica, +1 666-666-6666",
        1697044621,
    ),
    "interactive_button_reply": Case(fixture("button_reply.json"), "title", 1698266730),
    "interactive_list_reply": Case(fixture("list_reply.json"), "title", 1698266905),
    "interactive_nfm_reply": Case(fixture("nfm_reply.json"), "Sent", 1702502473),
    "quick_reply_button": Case(fixture("quick_reply_button.json"), "title", 1698269027),
    "reaction": Case(fixture("reaction.json"), "Reacted \U0001f62e", 1697044456),
    "unreaction": Case(fixture("unreaction.json"), "Removed reaction", 1697044456),
    "reply_context": Case(fixture("reply.json"), "replied text", 1697044746),
    "unsupported": Case(fixture("unsupported.json"), "[unsupported message]", 1697044706),
    # A revoke whose original was never stored: recorded as a deleted message, not dropped.
    "revoke_without_original": Case(fixture("revoke.json"), "[message deleted]", 1697043223),
}


@pytest.mark.parametrize("kind", list(CASES))
async def test_message_type_lands_in_the_senders_chat(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel, kind: str
) -> None:
    case = CASES[kind]
    response = await post_whatsapp(gateway, whatsapp, case.body())
    assert response.status_code == 200, response.text

    client, contact, _, member, message, attachments = await first_conversation(pool, whatsapp)
    assert (client["first_name"], client["last_name"], client["phone_number"]) == (
        "Test Name",
        None,
        "+972987654321",
    )
    assert (contact["contact_type"], contact["contact_value"]) == ("whatsapp", "+972987654321")
    assert (member["transport"], member["transport_meta"]) == ("whatsapp", PYWA_MEMBER)
    assert message["message"] == case.text
    assert (message["sent_at"], message["read_at"]) == (utc(case.sent_at), None)
    assert [(a["path"], a["mimetype"], a["name"], a["hash"], a["size"]) for a in attachments] == [
        (*a, 0) for a in case.attachments
    ]
    owners = [(a["message_id"], a["tenant_id"]) for a in attachments]
    assert owners == [(message["id"], whatsapp.tenant_id)] * len(case.attachments)


async def test_official_text_sample(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    """Meta's own sample: a contact without user ids, named by its profile."""
    response = await post_whatsapp(gateway, whatsapp, wa_raw("text_official.json"))
    assert (response.status_code, response.json()) == (200, {"ok": True})

    client, contact, chat, member, message, _ = await first_conversation(pool, whatsapp)
    assert (client["first_name"], client["phone_number"], client["email"]) == (
        "Sheena Nelson",
        "+16505551234",
        None,
    )
    assert (contact["contact_type"], contact["contact_value"]) == ("whatsapp", "+16505551234")
    assert member["transport_meta"] == {"wa_id": "16505551234", "phone": "+16505551234", **BUSINESS}
    assert (message["message"], message["sent_at"]) == (
        "Does it come in another color?",
        utc(1749416383),
    )
    assert chat["last_message_at"] == utc(1749416383)


async def test_sender_known_only_by_user_id(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    """The newer business-scoped user id without a phone: the identity is the user id."""
    body = wa_message(
        wa_text(
            "no phone here",
            wamid="wamid.userid1",
            timestamp=1760000000,
            sender="US.777",
            sender_field="from_user_id",
        ),
        contact={"profile": {"name": "Anon", "username": "anon_u"}, "user_id": "US.777"},
    )
    assert (await post_whatsapp(gateway, whatsapp, body)).status_code == 200

    rows = await wait_messages(pool, whatsapp, 1)
    [client], [contact], [member] = rows["clients"], rows["contacts"], rows["members"]
    assert (client["first_name"], client["phone_number"]) == ("Anon", None)
    assert (contact["contact_type"], contact["contact_value"]) == ("whatsapp", "US.777")
    assert member["transport_meta"] == {"user_id": "US.777", "username": "anon_u", **BUSINESS}
    assert rows["messages"][0]["message"] == "no phone here"


ORIGINAL_OF_EDIT = "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
EDIT_TS = 1749854575
EDIT_SENDER = "16505551234"


EDITED_IMAGE = {"mime_type": "image/jpeg", "sha256": "a1b2c3d4e5f6...", "id": "1234567890"}


def in_edit_envelope(message: dict[str, Any]) -> dict[str, Any]:
    """A message (of the sender of edit.json) in edit.json's envelope."""
    body = wa_payload("edit.json")
    body["entry"][0]["changes"][0]["value"]["messages"] = [message]
    return body


def original_of_edit(caption: str = "original caption") -> dict[str, Any]:
    """The image edit.json edits (same media, another caption), sent a minute before."""
    image = {**EDITED_IMAGE, "caption": caption}
    original = wa_element(
        "image", image, wamid=ORIGINAL_OF_EDIT, timestamp=EDIT_TS - 60, sender=EDIT_SENDER
    )
    return in_edit_envelope(original)


def later_text(text: str = "marker") -> dict[str, Any]:
    return in_edit_envelope(
        wa_text(text, wamid="wamid.later", timestamp=EDIT_TS + 60, sender=EDIT_SENDER)
    )


async def test_edit_after_original_updates_the_text(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, original_of_edit())).status_code == 200
    await wait_messages(pool, whatsapp, 1)
    assert (await post_whatsapp(gateway, whatsapp, wa_raw("edit.json"))).status_code == 200

    rows = await wait_first_text_change(pool, whatsapp, "original caption")
    [message] = rows["messages"]
    assert (message["message"], message["sent_at"]) == ("Updated image caption", utc(EDIT_TS - 60))
    assert len(rows["clients"]) == len(rows["members"]) == 1
    # The edit carries the media again: it is not stored a second time.
    assert [(a["message_id"], a["path"]) for a in rows["attachments"]] == [
        (message["id"], "whatsapp:1234567890")
    ]


async def test_edit_before_original_is_kept_and_the_late_original_changes_nothing(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, wa_raw("edit.json"))).status_code == 200
    original = original_of_edit("stale original")
    assert (await post_whatsapp(gateway, whatsapp, original)).status_code == 200
    # A later message of the same sender (same partition): once it is stored, so are both.
    assert (await post_whatsapp(gateway, whatsapp, later_text())).status_code == 200

    rows = await wait_messages(pool, whatsapp, 2)
    assert [m["message"] for m in rows["messages"]] == ["Updated image caption", "marker"]
    edited = rows["messages"][0]
    assert edited["sent_at"] == utc(EDIT_TS)  # the only time known when it was created
    assert [
        (a["message_id"], a["path"], a["mimetype"], a["hash"]) for a in rows["attachments"]
    ] == [(edited["id"], "whatsapp:1234567890", "image/jpeg", "a1b2c3d4e5f6...")]


async def test_revoke_after_original_replaces_the_text(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    # revoke.json revokes wamid.xyzxyz at 1697043223; the original is sent a minute earlier.
    original = wa_message(wa_text("oops, wrong chat", wamid="wamid.xyzxyz", timestamp=1697043163))
    assert (await post_whatsapp(gateway, whatsapp, original)).status_code == 200
    await wait_messages(pool, whatsapp, 1)
    assert (await post_whatsapp(gateway, whatsapp, wa_raw("revoke.json"))).status_code == 200

    rows = await wait_first_text_change(pool, whatsapp, "oops, wrong chat")
    [message] = rows["messages"]
    assert (message["message"], message["sent_at"]) == ("[message deleted]", utc(1697043163))


BATCH_IMAGE = "wamid.xyzxyz"


async def test_batch_envelope_stores_every_message_and_status(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    before = len(gateway.publisher.published)
    response = await post_whatsapp(gateway, whatsapp, wa_raw("batch.json"))
    assert response.status_code == 200, response.text
    published = gateway.publisher.published[before:]
    # Three messages, the delivered and read statuses; `played` and account_update are skipped.
    assert sorted(e.event_type for e in published) == [
        "message.received",
        "message.received",
        "message.received",
        "message.status",
        "message.status",
    ]

    rows = await wait_messages(pool, whatsapp, 3)
    rows = await eventually(
        lambda: tenant_rows(pool, whatsapp.tenant_id),
        lambda r: any(m["read_at"] for m in r["messages"]),
    )
    by_text = {m["message"]: m for m in rows["messages"]}
    assert set(by_text) == {"Does it come in another color?", "[image]", "Reacted \U0001f62e"}
    clients = {c["phone_number"]: c for c in rows["clients"]}
    assert set(clients) == {"+16505551234", "+972987654321"}
    chat_of = {c["client_id"]: c["id"] for c in rows["chats"]}
    assert (
        by_text["Does it come in another color?"]["chat_id"]
        == chat_of[clients["+16505551234"]["id"]]
    )
    assert (
        by_text["[image]"]["chat_id"]
        == by_text["Reacted \U0001f62e"]["chat_id"]
        == chat_of[clients["+972987654321"]["id"]]
    )
    assert len(rows["members"]) == 2
    # The statuses name the image (an inbound message, as in the fixture): read wins.
    image = by_text["[image]"]
    assert (image["sent_at"], image["read_at"]) == (utc(1697043379), utc(1689380458))
    assert by_text["Does it come in another color?"]["read_at"] is None
    assert [(a["message_id"], a["path"]) for a in rows["attachments"]] == [
        (image["id"], "whatsapp:65463453")
    ]
    assert await logged_statuses(pool, whatsapp) == [
        (BATCH_IMAGE, "delivered"),
        (BATCH_IMAGE, "read"),
    ]


def marker(sender: str, name: str, n: int) -> dict[str, Any]:
    """A later message of `sender`, under the profile name it already has (a new profile name
    would rename the client)."""
    return wa_message(
        wa_text(f"marker {n}", wamid=f"wamid.marker{n}", timestamp=1760000000, sender=sender),
        contact={"profile": {"name": name}, "wa_id": sender},
    )


async def test_batch_delivered_twice_adds_no_rows(
    gateway: Gateway, pool: asyncpg.Pool, whatsapp: TenantChannel
) -> None:
    assert (await post_whatsapp(gateway, whatsapp, wa_raw("batch.json"))).status_code == 200
    first = await eventually(
        lambda: tenant_counts(pool, whatsapp),
        lambda c: c["crm_chat_messages"] == 3 and c["ingest_message_statuses"] == 2,
    )
    rows_before = await tenant_rows(pool, whatsapp.tenant_id)

    assert (await post_whatsapp(gateway, whatsapp, wa_raw("batch.json"))).status_code == 200
    # One later message per sender: each is on its sender's partition behind the redelivered
    # batch, so once both are stored the redelivery has been consumed.
    senders = (("16505551234", "Sheena Nelson"), ("972987654321", "Test Name"))
    for n, (sender, name) in enumerate(senders):
        assert (await post_whatsapp(gateway, whatsapp, marker(sender, name, n))).status_code == 200
    second = await eventually(
        lambda: tenant_counts(pool, whatsapp), lambda c: c["crm_chat_messages"] >= 5
    )
    await asyncio.sleep(0.3)  # a wrongly stored duplicate would show up now at the latest
    second = await tenant_counts(pool, whatsapp)

    assert first == {
        "crm_clients": 2,
        "crm_client_contacts": 2,
        "crm_chats": 2,
        "crm_chat_members": 2,
        "crm_chat_messages": 3,
        "crm_chat_message_attachments": 1,
        "crm_message_templates": 0,
        "core_uploads": 1,
        "ingest_message_refs": 3,
        "ingest_message_statuses": 2,
    }
    assert second == first | {"crm_chat_messages": 5, "ingest_message_refs": 5}
    rows_after = await tenant_rows(pool, whatsapp.tenant_id)
    assert rows_after["messages"][:3] == rows_before["messages"]
    assert rows_after["attachments"] == rows_before["attachments"]
    assert rows_after["clients"] == rows_before["clients"]


async def test_phone_number_id_mismatch_publishes_no_event_and_is_kept(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    # Signed with the app's secret, so genuine, but for another number of the app: nothing
    # enters this channel; the body is kept (channel_mismatch) for a replay once the channel's
    # phone_number_id is fixed, since Meta would drop it after 7 days of 4xx.
    channel = await signed_channel(pool, "whatsapp", phone_number_id="999000111")
    before = len(gateway.publisher.published)
    response = await post_whatsapp(gateway, channel, wa_raw("text_official.json"))
    assert response.status_code == 200
    # A batch where only one of several values names another number: kept whole.
    mixed = wa_payload("batch.json")
    for change in mixed["entry"][1]["changes"]:
        change["value"]["metadata"]["phone_number_id"] = "999000111"
    assert (await post_whatsapp(gateway, channel, mixed)).status_code == 200
    published = gateway.publisher.published[before:]
    assert [(type(r).__name__, getattr(r, "reason_kind", None)) for r in published] == [
        ("RawWebhook", "channel_mismatch"),
        ("RawWebhook", "channel_mismatch"),
    ]
    before = len(gateway.publisher.published)

    # The same channel takes payloads for its own number.
    matching = copy.deepcopy(mixed)
    for entry in matching["entry"]:
        for change in entry["changes"]:
            if "metadata" in change["value"]:
                change["value"]["metadata"]["phone_number_id"] = "999000111"
    assert (await post_whatsapp(gateway, channel, matching)).status_code == 200
    assert len(gateway.publisher.published) == before + 5


async def test_get_handshake_echoes_the_challenge(gateway: Gateway, pool: asyncpg.Pool) -> None:
    channel = await signed_channel(pool, "whatsapp", verify_token="vt-42")
    response = await gateway.client.get(
        channel.path,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": "vt-42",
            "hub.challenge": "1158201444",
        },
    )
    assert response.status_code == 200
    assert response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")

    wrong = await gateway.client.get(
        channel.path,
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1158201444"},
    )
    assert wrong.status_code == 403
    assert "error" in wrong.json()
    assert "1158201444" not in wrong.text
