"""Real emails are never refused for what can be recovered (issue 12 §2), and one with no
sender at all is kept, not refused: found by feeding other projects' test mails through the
gateway as a mail server would."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from ingest.errors import NoSender
from ingest.events import MessageEvent
from ingest.intake import take
from tests.unit.adapters import only_event
from tests.unit.test_email import (
    MAILGUN_NOW,
    adapter,
    fields,
    handle,
    mailgun_sign,
    make_ctx,
    one,
    request,
)

PDF = b"%PDF-1.4 tiny"
# Names of event fields a reason must never show (they mean nothing to whoever reads it).
INTERNAL_NAMES = ("version", "sent_at", "external_message_id", "contact_value", "first_name")


def test_an_email_that_is_only_an_attachment_has_that_one_attachment() -> None:
    body = (
        b"From: Scanner <scanner@example.com>\r\n"
        b"Subject: Scan\r\n"
        b"Message-ID: <scan-1@example.com>\r\n"
        b"Content-Type: application/pdf; name=scan.pdf\r\n"
        b"Content-Disposition: attachment; filename=scan.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(PDF) + b"\r\n"
    )
    event = one(body)
    [attachment] = event.attachments
    assert (attachment.filename, attachment.mime_type) == ("scan.pdf", "application/pdf")
    assert attachment.size_bytes == len(PDF)
    assert attachment.provider_ref == "email:scan-1@example.com#0"
    assert event.text == "[email] Scan"  # the attachment is not read as the text


def test_an_email_dated_before_1970_is_kept_with_its_date() -> None:
    body = (
        b"From: Old Timer <old@example.com>\r\n"
        b"Date: Tue, 16 Jul 1969 13:32:00 +0000\r\n"
        b"Subject: Liftoff\r\n\r\nWe have liftoff.\r\n"
    )
    event = one(body)
    assert event.sent_at == datetime(1969, 7, 16, 13, 32, tzinfo=UTC)
    assert event.version == 0  # versions start at 1970; this one orders before every later one
    assert event.text == "We have liftoff."


def test_one_malformed_line_above_from_does_not_hide_the_sender() -> None:
    body = (
        b"Received: from mx.example.com\r\n"
        b"this line is not a header\r\n"
        b"From: Alice <Alice@Example.com>\r\n"
        b"Subject: Still here\r\n"
        b"Message-ID: <m-2@example.com>\r\n\r\n"
        b"Hello.\r\n"
    )
    event = one(body)
    assert event.sender.contact_value == "alice@example.com"
    assert event.sender.first_name == "Alice"
    assert event.text == "Hello."  # the headers below the bad line are headers, not text
    assert event.external_message_id == "m-2@example.com"
    assert event.message_meta["subject"] == "Still here"
    assert event.message_meta["attachment_errors"] == ["headers: malformed lines skipped"]


@pytest.mark.parametrize(
    ("headers", "address", "fallback"),
    [
        (b"Reply-To: Bob <bob@example.com>\r\nSender: agent@example.com\r\n", "bob@example.com",
         "Reply-To"),
        (b"From: not an address\r\nSender: Agent <agent@example.com>\r\n", "agent@example.com",
         "Sender"),
    ],
)  # fmt: skip
def test_a_missing_from_falls_back_and_says_so(headers: bytes, address: str, fallback: str) -> None:
    event = one(headers + b"Subject: hi\r\n\r\nbody\r\n")
    assert event.sender.contact_value == address
    assert event.message_meta["sender_fallback"] == fallback


def test_a_from_of_its_own_is_not_flagged() -> None:
    event = one(b"From: a@example.com\r\nReply-To: b@example.com\r\n\r\nx\r\n")
    assert event.sender.contact_value == "a@example.com"
    assert "sender_fallback" not in event.message_meta


def test_mailgun_sender_field_is_the_last_fallback() -> None:
    data = fields("mailgun_basics")
    data.pop("from", None)
    data.pop("From", None)
    data["message-headers"] = "[]"
    data["sender"] = "Envelope@Example.com"
    result = adapter.handle(
        request(
            urlencode(mailgun_sign(data)).encode(),
            content_type="application/x-www-form-urlencoded",
            authorization=None,
        ),
        make_ctx(now=MAILGUN_NOW),
    )
    event = only_event(result, MessageEvent)
    assert event.sender.contact_value == "envelope@example.com"
    assert event.message_meta["sender_fallback"] == "sender"


def test_an_email_with_no_sender_at_all_is_kept_whole_with_a_plain_reason() -> None:
    body = b"Subject: nobody\r\nTo: us@example.com\r\n\r\nwho sent this?\r\n"
    with pytest.raises(NoSender):
        handle(body)
    raw = request(body)
    taken = take(adapter, raw, make_ctx(), adapter.verify(raw, make_ctx()))
    assert taken.events == []
    [kept] = taken.kept
    assert kept.body == body
    assert kept.reason_kind == "no_sender"
    assert kept.reason == "email has no sender address (From, Reply-To, Sender)"
    assert not any(name in kept.reason for name in INTERNAL_NAMES)


def test_mailgun_attachment_that_cannot_be_decoded_is_kept_and_the_message_goes_on() -> None:
    data = mailgun_sign(fields("mailgun_basics"))
    boundary = "b0undary"
    out = b""
    for name, value in data.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    broken = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment-1"; '
        'filename="broken.bin"\r\nContent-Type: application/octet-stream\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + b"A$$$AA=\r\n"
    good = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment-2"; '
        'filename="ok.txt"\r\nContent-Type: text/plain\r\n\r\n'
    ).encode() + b"fine\r\n"
    body = out + broken + good + f"--{boundary}--\r\n".encode()
    raw = request(
        body, content_type=f"multipart/form-data; boundary={boundary}", authorization=None
    )
    ctx = make_ctx(now=MAILGUN_NOW)
    taken = take(adapter, raw, ctx, adapter.verify(raw, ctx))
    [event] = taken.events
    assert isinstance(event, MessageEvent)
    assert [a.filename for a in event.attachments] == ["ok.txt"]
    assert event.message_meta["attachment_errors"] == [
        "attachments: 1 unreadable, kept as dead letters"
    ]
    [kept] = taken.kept
    assert kept.reason_kind == "unreadable_attachment"
    assert kept.reason == "attachment 0 (broken.bin) cannot be decoded"
    assert kept.element == "attachment.0"
    assert b"A$$$AA=" in kept.body
