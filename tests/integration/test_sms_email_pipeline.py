"""Twilio SMS and email webhooks -> gateway -> real broker -> consumer -> real PostgreSQL.

SMS requests are signed with `compute_signature` and the channel's auth token over the URL the
gateway sees (`https://gateway.test/webhooks/sms/<id>`), or over the channel's `public_url`.
Email comes in as raw RFC 5322 with the bearer token, or as a Mailgun form signed with the
channel's signing key. Payloads: tests/payloads/{sms,email} (see their SOURCES.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import asyncpg
import pytest

from ingest.config import Settings
from ingest.events import MAX_TEXT_CHARS
from ingest.objectstore import open_store
from tests.integration.pipeline import Gateway, TenantChannel
from tests.integration.rows import (
    external_ids,
    first_conversation,
    message_meta,
    settled_rows,
    wait_messages,
)
from tests.integration.signing import (
    eml,
    mailgun_fields,
    post_email,
    post_mailgun,
    post_sms,
    signed_channel,
    sms_fields,
)
from tests.support import read_object, sha256

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
SMS_FROM = "+18017916516"
MMS_URL = (
    "https://api.twilio.com/2010-04-01/Accounts/ACb2722d11b73d22b594c81d79aed6b8d2"
    "/Messages/MM3934ada51e7a20b35b4dd6c7635a29d2/Media/MEff408942d874d4301caea243989659ea"
)
SMS_MEMBER = {
    "phone": SMS_FROM,
    "raw_from": SMS_FROM,
    "to": "+18446151430",
    "account_sid": "ACb2722d11b73d22b594c81d79aed6b8d2",
    "messaging_service_sid": "MGb408fe4a968875dffe0b800d08cd6378",
}


def naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# --- SMS --------------------------------------------------------------------------------------


async def test_sms_text_creates_client_chat_member_and_message(
    gateway: Gateway, pool: asyncpg.Pool, sms: TenantChannel
) -> None:
    started = naive_now()
    response = await post_sms(gateway, sms, sms_fields("basic_text"))
    finished = naive_now()
    assert response.status_code == 200, response.text
    assert response.content == TWIML_EMPTY
    assert response.headers["content-type"].startswith("application/xml")

    client, contact, _, member, message, attachments = await first_conversation(pool, sms)
    # Twilio sends no name: the number names the client.
    assert (client["first_name"], client["phone_number"], client["email"]) == (
        SMS_FROM,
        SMS_FROM,
        None,
    )
    assert (contact["contact_type"], contact["contact_value"]) == ("phone", SMS_FROM)
    assert (member["transport"], member["transport_meta"]) == ("sms", SMS_MEMBER)
    assert (message["message"], message["read_at"]) == ("Text 12 12:20pm", None)
    # Twilio sends no timestamp with an inbound message: the time the gateway received it.
    assert started <= message["sent_at"] <= finished
    assert attachments == []


async def test_mms_media_become_attachments(
    gateway: Gateway, pool: asyncpg.Pool, sms: TenantChannel
) -> None:
    single = sms_fields("mms_single_image")
    double = sms_fields(
        "mms_single_image",
        MessageSid="MM00000000000000000000000000000002",
        SmsMessageSid="MM00000000000000000000000000000002",
        SmsSid="MM00000000000000000000000000000002",
        Body="two files",
        NumMedia="2",
        MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM2/Media/ME2",
        MediaContentType1="application/pdf",
    )
    for params in (single, double):
        assert (await post_sms(gateway, sms, params)).status_code == 200

    rows = await wait_messages(pool, sms, 2)
    first, second = rows["messages"]
    assert (first["message"], second["message"]) == ("", "two files")
    assert sorted(
        (a["message_id"], a["path"], a["mimetype"], a["name"], a["hash"], a["size"])
        for a in rows["attachments"]
    ) == sorted(
        [
            (first["id"], MMS_URL, "image/jpeg", "media", "", 0),
            (second["id"], MMS_URL, "image/jpeg", "media", "", 0),
            (
                second["id"],
                "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM2/Media/ME2",
                "application/pdf",
                "media",
                "",
                0,
            ),
        ]
    )
    assert {a["tenant_id"] for a in rows["attachments"]} == {sms.tenant_id}


async def test_sms_signed_over_the_public_url_behind_a_proxy(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    public = "https://crm.example.com/hooks/twilio-sms"
    channel = await signed_channel(pool, "sms", public_url=public)
    params = sms_fields("basic_text")
    # Signed over the URL the gateway sees: not what Twilio signs when public_url is set.
    assert (await post_sms(gateway, channel, params)).status_code == 401
    assert (await post_sms(gateway, channel, params, signed_url=public)).status_code == 200

    rows = await wait_messages(pool, channel, 1)
    assert [m["message"] for m in rows["messages"]] == ["Text 12 12:20pm"]


async def test_sms_delivered_twice_is_stored_once(
    gateway: Gateway, pool: asyncpg.Pool, sms: TenantChannel
) -> None:
    params = sms_fields("basic_text")
    marker = sms_fields(
        "basic_text",
        MessageSid="SM00000000000000000000000000000099",
        SmsMessageSid="SM00000000000000000000000000000099",
        SmsSid="SM00000000000000000000000000000099",
        Body="marker",
    )
    for body in (params, params, marker):  # the marker follows on the sender's partition
        assert (await post_sms(gateway, sms, body)).status_code == 200

    rows = await settled_rows(pool, sms, 2)
    assert [m["message"] for m in rows["messages"]] == ["Text 12 12:20pm", "marker"]
    assert [len(rows[k]) for k in ("clients", "contacts", "chats", "members")] == [1, 1, 1, 1]


# --- email ------------------------------------------------------------------------------------


def with_message_id(raw: bytes, message_id: str) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"message-id:")]
    return b"\n".join([*lines, f"Message-ID: <{message_id}>".encode()]) + sep + body


async def test_raw_email_creates_client_chat_member_and_message(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    response = await post_email(gateway, email, eml("plain"))
    assert (response.status_code, response.json()) == (200, {"ok": True})

    client, contact, _, member, message, _ = await first_conversation(pool, email)
    assert (client["first_name"], client["last_name"], client["email"], client["phone_number"]) == (
        "María Kovács",
        None,
        "maria.k@example.net",
        None,
    )
    assert (contact["contact_type"], contact["contact_value"]) == ("email", "maria.k@example.net")
    assert (member["transport"], member["transport_meta"]) == (
        "email",
        {
            "email": "maria.k@example.net",
            "subject": "Order #41207 – wrong size",
            "message_id": "20240514072107.4F2A1C0012@mx.example.net",
        },
    )
    assert message["message"] == (
        "Hello,\n\nthe shoes I got are size 42, I ordered 41. Can I swap them?\n\nMaría"
    )
    assert message["sent_at"] == datetime(2024, 5, 14, 7, 21, 7)  # Date: 09:21:07 +0200


async def test_html_only_email_is_stored_as_text(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    assert (await post_email(gateway, email, eml("html_only"))).status_code == 200
    rows = await wait_messages(pool, email, 1)
    assert (
        rows["messages"][0]["message"] == "Hello José,\n\nYour invoice is ready.\nTotal: 10 € & VAT"
    )
    assert rows["contacts"][0]["contact_value"] == "newsletter@example.com"


async def test_email_attachments_are_stored_uploads(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel, settings: Settings
) -> None:
    """The bytes only the webhook carries are in the media store before it is answered, and
    core_uploads points at them: path, byte count and sha256 of the bytes."""
    raw = eml("attachment")
    assert (await post_email(gateway, email, raw)).status_code == 200

    rows = await wait_messages(pool, email, 1)
    [message] = rows["messages"]
    assert message["message"] == "See the receipt attached."
    served = [
        part.get_payload(decode=True)
        for part in BytesParser(policy=policy.default).parsebytes(raw).iter_attachments()
    ]
    assert [
        (a["message_id"], a["tenant_id"], a["name"], a["mimetype"], a["size"], a["hash"])
        for a in rows["attachments"]
    ] == [
        (message["id"], email.tenant_id, "receipt.pdf", "application/pdf", 54, sha256(served[0])),
        (message["id"], email.tenant_id, "föto.png", "image/png", 8, sha256(served[1])),
    ]
    store = open_store(settings.media_store)
    assert [await read_object(store, a["path"]) for a in rows["attachments"]] == served
    assert all(a["path"].startswith(settings.media_store) for a in rows["attachments"])
    # The message as received is kept too, beside its provider id.
    meta = await message_meta(pool, message["id"])
    assert await read_object(store, meta["raw_mime"]) == raw


async def test_email_reply_is_stored_in_the_senders_chat(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    for name in ("attachment", "reply"):  # both from peter@example.org
        assert (await post_email(gateway, email, eml(name))).status_code == 200

    rows = await wait_messages(pool, email, 2)
    assert [m["message"] for m in rows["messages"]] == [
        "See the receipt attached.",
        "Thanks, that works.\n\n> On Fri, support wrote:\n> Please try again.",
    ]
    assert len(rows["chats"]) == len(rows["members"]) == 1
    assert {m["chat_id"] for m in rows["messages"]} == {rows["chats"][0]["id"]}
    assert rows["chats"][0]["last_message_at"] == datetime(2024, 5, 18, 7, 30)


async def test_email_threading_meta_is_kept(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    assert (await post_email(gateway, email, eml("reply"))).status_code == 200
    rows = await wait_messages(pool, email, 1)
    meta = rows["members"][0]["transport_meta"]
    assert (meta.get("subject"), meta.get("in_reply_to"), meta.get("references")) == (
        "Re: Your ticket #88",
        "ticket-88-1@shop.example.com",
        ["ticket-88-0@shop.example.com", "ticket-88-1@shop.example.com"],
    )
    # Per message too, beside the message's provider id.
    stored = await message_meta(pool, rows["messages"][0]["id"])
    assert (stored["subject"], stored["in_reply_to"], stored["format"]) == (
        "Re: Your ticket #88",
        "ticket-88-1@shop.example.com",
        "rfc822",
    )


async def test_email_delivered_twice_is_stored_once(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    """Also for a message without Message-ID: its id is a hash of the raw message."""
    bounce = eml("no_message_id")
    marker = with_message_id(bounce, "marker@mx.example.net")  # same sender, later
    for raw in (bounce, bounce, eml("plain"), eml("plain"), marker):
        assert (await post_email(gateway, email, raw)).status_code == 200

    rows = await settled_rows(pool, email, 3)
    assert sorted(m["message"] for m in rows["messages"]) == sorted(
        [
            "This is the mail system at host mx.example.net.",
            "This is the mail system at host mx.example.net.",  # the marker
            "Hello,\n\nthe shoes I got are size 42, I ordered 41. Can I swap them?\n\nMaría",
        ]
    )
    assert await external_ids(pool, email) == [
        "20240514072107.4F2A1C0012@mx.example.net",
        "marker@mx.example.net",
        "sha256:792ad7c1184ae2049c129cb6d87b7908dd8863474ebdc001ecaa375ab2576ac2",
    ]


async def test_mailgun_form_signed_with_the_signing_key(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    fields = mailgun_fields("mailgun_basics")
    response = await post_mailgun(gateway, email, fields)
    assert response.status_code == 200, response.text
    # Mailgun retries with a new token, timestamp and signature: still one message.
    assert (await post_mailgun(gateway, email, fields)).status_code == 200
    later = dict(fields, **{"body-plain": "marker"})
    # A later email (later Date): its thread is the newest, so the member keeps it.
    later["message-headers"] = (
        fields["message-headers"]
        .replace("CAEPk3R+4Zr", "marker-1")
        .replace('"Wed, 11 Oct 2017 18:31:04 -0700"', '"Wed, 11 Oct 2017 18:45:00 -0700"')
    )
    assert (await post_mailgun(gateway, email, later)).status_code == 200

    rows = await settled_rows(pool, email, 2)
    assert sorted(m["message"] for m in rows["messages"]) == ["Test body plain", "marker"]
    [client], [contact], [member] = rows["clients"], rows["contacts"], rows["members"]
    assert (client["first_name"], client["email"]) == ("Displayed From", "from+test@example.org")
    assert (contact["contact_type"], contact["contact_value"]) == (
        "email",
        "from+test@example.org",
    )
    assert member["transport_meta"] == {
        "email": "from+test@example.org",
        "subject": "Test subject",
        "message_id": "marker-1@mail.example.org",
    }
    assert sorted(m["sent_at"] for m in rows["messages"]) == [
        datetime(2017, 10, 12, 1, 31, 4),
        datetime(2017, 10, 12, 1, 45, 0),
    ]


async def test_mailgun_body_mime_is_parsed_as_the_raw_message(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    response = await post_mailgun(gateway, email, mailgun_fields("mailgun_mime"))
    assert response.status_code == 200, response.text

    rows = await wait_messages(pool, email, 1)
    assert rows["messages"][0]["message"] == "It's a body…"
    assert rows["messages"][0]["sent_at"] == datetime(2017, 10, 13, 1, 3, 30)
    assert rows["contacts"][0]["contact_value"] == "test@example.org"
    assert rows["clients"][0]["first_name"] == "A tester"


async def test_email_longer_than_the_text_limit_is_stored_cut_and_marked(
    gateway: Gateway, pool: asyncpg.Pool, email: TenantChannel
) -> None:
    # 2.2 MB of text: over Kafka's 1 MB record limit, well under the 25 MB body limit. It used
    # to be answered 503 on every retry, so the provider gave up and the message was lost.
    head, sep, _ = eml("plain").partition(b"\n\n")
    sentence = b"Lorem ipsum dolor sit amet. "
    raw = with_message_id(head + sep + sentence * 80_000, "long-1@example.net")
    response = await post_email(gateway, email, raw)
    assert (response.status_code, response.json()) == (200, {"ok": True})

    rows = await wait_messages(pool, email, 1)
    text = rows["messages"][0]["message"]
    assert len(text) == MAX_TEXT_CHARS
    assert sentence.decode() * 100 in text
    stored = await message_meta(pool, rows["messages"][0]["id"])
    original = len((sentence * 80_000).decode().strip())
    assert stored["text_truncated"]["original_chars"] >= original
