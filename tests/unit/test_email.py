"""EmailAdapter: raw RFC 5322 with a bearer token, and Mailgun Routes posts (signed or bearer).

channel_config is in test_channel_config.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import urlencode

import pytest

from ingest.errors import BadPayload, NoSender, Unauthorized
from ingest.events import (
    Attachment,
    MessageEvent,
    Sender,
    encode_event,
    make_event_id,
    utc_from_unix,
)
from ingest.transports.base import ParseContext, RawRequest, WebhookResult
from ingest.transports.email import EmailAdapter, html_to_text
from tests.unit.adapters import captured, channel, context, envelope, only_event, post

CHANNEL_ID = uuid.UUID("7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b")
TOKEN = "bearer-token_0123456789"
SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"  # a made-up Mailgun HTTP webhook signing key
RECEIVED_AT = datetime(2024, 5, 20, 12, 0, tzinfo=UTC)
MAILGUN_TS = 1461261330  # the fixture's timestamp; Mailgun tests run with the clock right after it
MAILGUN_NOW = utc_from_unix(MAILGUN_TS + 60)
URLENCODED = "application/x-www-form-urlencoded"

adapter = EmailAdapter()


def make_ctx(config: dict[str, Any] | None = None, now: datetime = RECEIVED_AT) -> ParseContext:
    cfg = {"token": TOKEN, "signing_key": SIGNING_KEY} if config is None else config
    return context(channel("email", CHANNEL_ID, cfg), received_at=now)


def raw(name: str) -> bytes:
    return captured("email", f"{name}.eml")


def fields(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(captured("email", f"{name}.json"))
    return data


def request(
    body: bytes,
    content_type: str | None = "message/rfc822",
    authorization: str | None = f"Bearer {TOKEN}",
) -> RawRequest:
    headers = {"content-type": content_type, "authorization": authorization}
    return post("https://x/webhooks/email/c", body, headers)


def handle(body: bytes, *, ctx: ParseContext | None = None, **kwargs: Any) -> WebhookResult:
    return adapter.handle(request(body, **kwargs), ctx or make_ctx())


def one(body: bytes, *, ctx: ParseContext | None = None, **kwargs: Any) -> MessageEvent:
    return only_event(handle(body, ctx=ctx, **kwargs), MessageEvent)


def mailgun_sign(data: dict[str, str], key: str = SIGNING_KEY) -> dict[str, str]:
    signed = dict(data)
    message = (signed["timestamp"] + signed["token"]).encode()
    signed["signature"] = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return signed


def multipart(
    data: dict[str, str], files: list[tuple[str, str, str, bytes]] | None = None
) -> tuple[bytes, str]:
    """multipart/form-data as an HTTP client (Mailgun) would send it."""
    boundary = "----MailgunBoundary7MA4YWxkTrZu0gW"
    out = b""
    for name, value in data.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, filename, mime, content in files or []:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {mime}\r\n\r\n'
        ).encode()
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def urlencoded(data: dict[str, str]) -> bytes:
    return urlencode(data).encode()


def mailgun_post(
    body: bytes,
    content_type: str = URLENCODED,
    *,
    ctx: ParseContext | None = None,
    authorization: str | None = None,
) -> WebhookResult:
    """A Mailgun Routes post received just after the fixtures' timestamp, with no bearer token
    unless one is given."""
    ctx = ctx or make_ctx(now=MAILGUN_NOW)
    return handle(body, ctx=ctx, content_type=content_type, authorization=authorization)


def mailgun(data: dict[str, str], now: datetime = MAILGUN_NOW) -> MessageEvent:
    """The event of `data` posted as Mailgun signs it, received at `now`."""
    result = mailgun_post(urlencoded(mailgun_sign(data)), ctx=make_ctx(now=now))
    return only_event(result, MessageEvent)


def attachment(
    mid: str, index: int, mime_type: str, size: int, name: str, **meta: str
) -> Attachment:
    """An email attachment: described by its place in the message, its bytes not kept."""
    ref = f"email:{mid}#{index}"
    return Attachment(
        kind="file",
        provider_ref=ref,
        mime_type=mime_type,
        size_bytes=size,
        filename=name,
        meta=meta,
    )


# --- raw RFC 5322 -------------------------------------------------------------------------------


def test_plain_message() -> None:
    event = one(raw("plain"))
    mid = "20240514072107.4F2A1C0012@mx.example.net"
    assert event == MessageEvent(
        **envelope("email", CHANNEL_ID, "maria.k@example.net", mid, received_at=RECEIVED_AT),
        event_type="message.received",
        external_message_id=mid,
        version=int(datetime(2024, 5, 14, 7, 21, 7, tzinfo=UTC).timestamp() * 1000),
        sent_at=datetime(2024, 5, 14, 7, 21, 7, tzinfo=UTC),
        sender=Sender(
            contact_type="email",
            contact_value="maria.k@example.net",
            first_name="María Kovács",
            email="maria.k@example.net",
        ),
        text="Hello,\n\nthe shoes I got are size 42, I ordered 41. Can I swap them?\n\nMaría",
        member_meta={
            "email": "maria.k@example.net",
            "subject": "Order #41207 – wrong size",
            "message_id": mid,
        },
        message_meta={
            "format": "rfc822",
            "subject": "Order #41207 – wrong size",
            "to": "Support <support@shop.example.com>",
            "cc": "billing@shop.example.com",
            # The message as received: the gateway stores it and puts its URL here.
            "raw_mime": f"email:{mid}#raw",
        },
    )


def test_the_bytes_only_the_webhook_carries_are_handed_to_the_gateway() -> None:
    """Each attachment's decoded bytes and the raw message, under the references the event
    holds (the gateway stores them before it publishes)."""
    body = raw("attachment")
    result = handle(body)
    event = only_event(result, MessageEvent)
    parsed = BytesParser(policy=policy.default).parsebytes(body)
    served = [part.get_payload(decode=True) for part in parsed.iter_attachments()]
    assert [(b.ref, b.data, b.content_type) for b in result.blobs] == [
        (event.attachments[0].provider_ref, served[0], "application/pdf"),
        (event.attachments[1].provider_ref, served[1], "image/png"),
        (event.message_meta["raw_mime"], body, "message/rfc822"),
    ]


def test_crlf_line_endings_give_the_same_event_text() -> None:
    crlf = raw("plain").replace(b"\n", b"\r\n")
    assert one(crlf).text == one(raw("plain")).text
    assert one(crlf).external_message_id == one(raw("plain")).external_message_id


def test_multipart_alternative_prefers_the_plain_part() -> None:
    event = one(raw("raw_mime_alternative"))
    assert event.text == "It's a body…"
    assert event.external_message_id == "CAEPk3RKEx@mail.example.org"
    assert event.sender.first_name == "A tester"
    assert not event.sender.name_is_placeholder
    assert event.sent_at == datetime(2017, 10, 13, 1, 3, 30, tzinfo=UTC)


def test_html_only_message_is_converted_to_text() -> None:
    event = one(raw("html_only"))
    assert event.text == "Hello José,\n\nYour invoice is ready.\nTotal: 10 € & VAT"
    assert event.sender.first_name == "newsletter"  # no display name: the local part
    assert event.sender.name_is_placeholder


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("a<br>b<br/>c", "a\nb\nc"),
        ("<script>x()</script><style>p{}</style>kept", "kept"),
        ("<div>  lots   of\n\tspace </div>", "lots of space"),
        ("&lt;tag&gt; &amp; &#233; &eacute;", "<tag> & é é"),
        ("<pre>a\nb</pre><ul><li>x</li><li>y</li></ul>", "a b\nx\n\ny"),
        ("<script>never closed", ""),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_attachments_are_described_not_kept() -> None:
    event = one(raw("attachment"))
    assert event.text == "See the receipt attached."
    mid = "attach-42@mail.example.org"
    inline = {"content_id": "<img1@mail.example.org>", "disposition": "inline"}
    assert event.attachments == [
        attachment(mid, 0, "application/pdf", 54, "receipt.pdf", disposition="attachment"),
        attachment(mid, 1, "image/png", 8, "föto.png", **inline),
    ]
    assert b"JVBERi0" not in encode_event(event)  # the bytes are not in the event


def test_message_without_message_id_gets_a_hash_id() -> None:
    body = raw("no_message_id")
    event = one(body)
    assert event.external_message_id == "sha256:" + hashlib.sha256(body).hexdigest()
    assert event.event_id == one(body).event_id  # a redelivery is recognised
    assert one(body + b"\n").external_message_id != event.external_message_id
    assert event.sender.email == "mailer-daemon@mx.example.net"
    assert event.sent_at == datetime(2024, 5, 17, 11, 0, tzinfo=UTC)  # no zone: taken as UTC


def test_threading_headers() -> None:
    event = one(raw("reply"))
    assert event.message_meta["in_reply_to"] == "ticket-88-1@shop.example.com"
    assert event.message_meta["references"] == [
        "ticket-88-0@shop.example.com",
        "ticket-88-1@shop.example.com",
    ]
    assert event.text.startswith("Thanks, that works.\n\n> On Fri")


@pytest.mark.parametrize("date", ["not a date", "Mon, 99 Foo 2024 99:99:99 +0000", ""])
def test_invalid_date_falls_back_to_received_at(date: str) -> None:
    body = raw("plain").replace(b"Tue, 14 May 2024 09:21:07 +0200", date.encode())
    assert one(body).sent_at == RECEIVED_AT


def test_empty_body_uses_the_subject() -> None:
    event = one(b"From: a@example.com\nSubject: Call me\n  back\n\n \n")
    assert event.text == "[email] Call me back"
    assert one(b"From: a@example.com\n\n").text == "[email]"


def test_long_message_id_is_hashed() -> None:
    long_id = "x" * 600 + "@example.com"
    event = one(f"From: a@example.com\nMessage-ID: <{long_id}>\n\nhi".encode())
    assert event.external_message_id == ("sha256:" + hashlib.sha256(long_id.encode()).hexdigest())


def test_undecodable_headers_and_charsets_do_not_fail() -> None:
    body = (
        b"From: J\xf6rg \xff <joerg@example.de>\nSubject: caf\xe9\n"
        b"Content-Type: text/plain; charset=unicode_escape\n\nbad \\ud800 escape\n"
    )
    event = one(body)
    assert event.sender.email == "joerg@example.de"
    assert "\ufffd" in event.sender.first_name
    encode_event(event)  # no surrogates anywhere


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01\x02 garbage",
        b"Subject: no sender\n\nhello",
        b"From: undisclosed-recipients:;\n\nhi",
        b"From: not an address\n\nhi",
    ],
)
def test_no_usable_sender_is_unprocessable(body: bytes) -> None:
    with pytest.raises(NoSender, match=r"email has no sender address \(From, Reply-To, Sender\)"):
        handle(body)


# --- bearer authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Basic {TOKEN}", "Bearer wrong", f"Bearer {TOKEN}x", f"{TOKEN}"],
)
def test_bad_bearer_is_unauthorized(authorization: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        handle(raw("plain"), authorization=authorization)
    assert info.value.status_code == 401


def test_bearer_scheme_is_case_insensitive() -> None:
    assert one(raw("plain"), authorization=f"bearer {TOKEN}").text


@pytest.mark.parametrize("config", [{}, {"token": ""}, {"signing_key": SIGNING_KEY}])
def test_channel_without_a_token_accepts_no_bearer(config: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        handle(raw("plain"), ctx=make_ctx(config), authorization="Bearer ")


def test_auth_comes_before_the_content_type() -> None:
    with pytest.raises(Unauthorized):
        handle(b"{}", content_type="application/json", authorization=None)
    with pytest.raises(BadPayload, match="expected message/rfc822"):
        handle(b"{}", content_type="application/json")


# --- Mailgun ------------------------------------------------------------------------------------


def test_mailgun_parsed_form() -> None:
    event = mailgun(fields("mailgun_basics"))
    mid = "CAEPk3R+4Zr@mail.example.org"
    assert event.event_id == make_event_id(CHANNEL_ID, "email", mid)
    assert event.external_message_id == mid
    assert event.received_at == MAILGUN_NOW
    assert event.sent_at == datetime(2017, 10, 12, 1, 31, 4, tzinfo=UTC)
    assert event.sender == Sender(
        contact_type="email",
        contact_value="from+test@example.org",
        first_name="Displayed From",
        email="from+test@example.org",
    )
    assert event.text == "Test body plain"
    assert event.message_meta == {
        "format": "mailgun",
        "subject": "Test subject",
        "to": '"Test Inbound" <test@inbound.example.com>, other@example.com',
        "cc": "cc@example.com",
        "recipient": "test@inbound.example.com",
    }


def test_mailgun_multipart_with_attachments() -> None:
    data = mailgun_sign(fields("mailgun_basics") | {"attachment-count": "2"})
    files = [
        ("attachment-1", "test.txt", "text/plain", b"test attachment"),
        ("attachment-2", "image.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\xff"),
    ]
    event = only_event(mailgun_post(*multipart(data, files)), MessageEvent)
    mid = "CAEPk3R+4Zr@mail.example.org"
    assert event.text == "Test body plain"
    assert event.attachments == [
        attachment(mid, 0, "text/plain", 15, "test.txt"),
        attachment(mid, 1, "image/png", 10, "image.png"),
    ]
    assert event.event_id == mailgun(fields("mailgun_basics")).event_id


def test_mailgun_body_mime_is_the_raw_message() -> None:
    data = fields("mailgun_mime")
    event = mailgun(data)
    direct = one(data["body-mime"].encode())
    assert event.event_id == direct.event_id
    assert event.text == direct.text == "It's a body…"
    assert event.message_meta["format"] == "mailgun"
    assert event.message_meta["recipient"] == "test@inbound.example.com"
    via_multipart = only_event(mailgun_post(*multipart(mailgun_sign(data))), MessageEvent)
    assert via_multipart.event_id == direct.event_id


def test_mailgun_without_message_id_is_stable_across_retries() -> None:
    data = fields("mailgun_basics")
    data["message-headers"] = "[]"
    first = mailgun(data)
    retry = mailgun(data | {"token": "another-token", "timestamp": str(MAILGUN_TS + 600)})
    assert first.external_message_id.startswith("sha256:")
    assert first.event_id == retry.event_id


@pytest.mark.parametrize("offset", [-(15 * 60) - 1, 15 * 60 + 1, 10**6])
def test_mailgun_stale_timestamp_is_unauthorized(offset: int) -> None:
    with pytest.raises(Unauthorized, match="stale Mailgun timestamp"):
        mailgun(fields("mailgun_basics"), now=utc_from_unix(MAILGUN_TS + offset))


def test_mailgun_timestamp_at_the_edge_is_accepted() -> None:
    assert mailgun(fields("mailgun_basics"), now=utc_from_unix(MAILGUN_TS + 15 * 60)).text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"signature": "0" * 64}, "invalid Mailgun signature"),
        ({"token": "replaced"}, "invalid Mailgun signature"),
        ({"timestamp": str(MAILGUN_TS + 1)}, "invalid Mailgun signature"),
        ({"signature": ""}, "missing Mailgun signature"),
    ],
)
def test_mailgun_bad_signature_is_unauthorized(change: dict[str, str], reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        mailgun_post(urlencoded(mailgun_sign(fields("mailgun_basics")) | change))


def test_mailgun_signed_with_another_key_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        mailgun_post(urlencoded(mailgun_sign(fields("mailgun_basics"), key="other")))


def test_mailgun_non_numeric_timestamp_is_unauthorized() -> None:
    data = mailgun_sign(fields("mailgun_basics") | {"timestamp": "soon"})
    with pytest.raises(Unauthorized, match="invalid Mailgun timestamp"):
        mailgun_post(urlencoded(data))


def test_mailgun_form_without_signing_key_needs_the_bearer() -> None:
    body = urlencoded(mailgun_sign(fields("mailgun_basics")))
    with pytest.raises(Unauthorized, match="missing bearer token"):
        mailgun_post(body, ctx=make_ctx({"token": TOKEN}, now=MAILGUN_NOW))
    # With the bearer the Mailgun signature is not needed (nor checked: a relay may re-post).
    unsigned = urlencoded(fields("mailgun_basics"))
    assert one(unsigned, ctx=make_ctx({"token": TOKEN}), content_type=URLENCODED).text


def test_a_wrong_bearer_is_not_rescued_by_a_mailgun_signature() -> None:
    body = urlencoded(mailgun_sign(fields("mailgun_basics")))
    with pytest.raises(Unauthorized, match="invalid bearer token"):
        mailgun_post(body, authorization="Bearer x")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"from=\xff", URLENCODED),
        (b"no boundary here", "multipart/form-data"),
        (b"--b\r\n\r\n--b--", "multipart/form-data; boundary=b\r\nX-Evil: 1"),
    ],
)
def test_malformed_forms_are_bad_payload(body: bytes, content_type: str) -> None:
    with pytest.raises(BadPayload):
        handle(body, content_type=content_type)


def test_mailgun_html_only_and_odd_message_headers() -> None:
    data = fields("mailgun_basics") | {"message-headers": '{"not": "a list"}'}
    del data["body-plain"], data["stripped-text"]
    event = mailgun(data)
    assert event.text == "Test body html"
    assert event.external_message_id.startswith("sha256:")
    assert event.sent_at == MAILGUN_NOW
