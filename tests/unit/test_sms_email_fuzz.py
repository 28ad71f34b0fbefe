"""Property tests: whatever the bytes, the SMS and email adapters answer with a result or a 4xx.

Every request is correctly authenticated (Twilio signature over the parameters as parsed, the
bearer token, or a fresh Mailgun signature), so the parsers themselves are what is exercised.
Any event produced must also survive the Kafka encoding unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from hypothesis import event, given
from hypothesis import strategies as st

from ingest.config import Transport
from ingest.events import MessageEvent
from ingest.transports.base import ParseContext, RawRequest
from ingest.transports.email import EmailAdapter
from ingest.transports.sms import TwilioSmsAdapter, compute_signature
from tests.unit.adapters import PAYLOADS, channel, context, post
from tests.unit.fuzzing import FUZZ, corrupt, outcome

SMS_REAL = {p.stem: p.read_bytes() for p in sorted((PAYLOADS / "sms").glob("*.form"))}
EMAIL_REAL = {p.stem: p.read_bytes() for p in sorted((PAYLOADS / "email").glob("*.eml"))}
MAILGUN_REAL = {
    p.stem: json.loads(p.read_text()) for p in sorted((PAYLOADS / "email").glob("mailgun_*.json"))
}
NOW = datetime(2016, 4, 21, 18, 0, tzinfo=UTC)  # close to the Mailgun fixtures' timestamp
SMS_TOKEN = "0123456789abcdef0123456789abcdef"
EMAIL_TOKEN = "bearer-token_0123456789"
SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
URL = "https://crm.example.com/webhooks/sms/c"
FORM = "application/x-www-form-urlencoded"
# A body that is not UTF-8 cannot carry a Twilio signature (it covers the decoded parameters).
NOT_UTF8 = "UTF-8"


def _ctx(transport: Transport, config: dict[str, str]) -> ParseContext:
    return context(channel(transport, uuid.uuid4(), config), received_at=NOW, correlation_id="fuzz")


SMS_CTX = _ctx("sms", {"auth_token": SMS_TOKEN})
EMAIL_CTX = _ctx("email", {"token": EMAIL_TOKEN, "signing_key": SIGNING_KEY})
sms = TwilioSmsAdapter(default_region="US")
email = EmailAdapter()


def check(
    adapter: TwilioSmsAdapter | EmailAdapter,
    request: RawRequest,
    ctx: ParseContext,
    unverifiable: str | None = None,
) -> None:
    """No 4xx after authentication: at most one event, or the whole body kept, or ignored
    (plus, for a Mailgun post, attachments kept on their own)."""
    taken = outcome(adapter, request, ctx, unverifiable=unverifiable)
    if taken is None:
        return
    assert len(taken.events) <= 1
    whole = [k for k in taken.kept if not k.element]
    if whole:
        assert not taken.events
        assert len(taken.kept) == 1
    elif not taken.kept:
        assert (taken.result.ignored is None) == bool(taken.events)
    event(type(taken.events[0]).__name__ if taken.events else "kept" if whole else "ignored")
    for ev in taken.events:
        if isinstance(ev, MessageEvent):
            assert ev.sender.contact_value
            assert ev.conversation_key.endswith(ev.sender.contact_value)


# --- SMS ----------------------------------------------------------------------------------------


def sms_request(body: bytes) -> RawRequest:
    """Signed exactly as Twilio would sign these parameters (when the body can be parsed)."""
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        signature = compute_signature(SMS_TOKEN, URL, params)
    except UnicodeDecodeError:
        signature = "unsigned"
    return post(URL, body, {"content-type": FORM, "x-twilio-signature": signature})


TWILIO_KEYS = [
    "MessageSid", "SmsSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body",
    "NumMedia", "MediaUrl0", "MediaContentType0", "MediaUrl1", "MediaUrl9", "MediaUrl10",
    "MessageStatus", "SmsStatus", "ErrorCode", "ErrorMessage", "ProfileName", "WaId",
    "Latitude", "Longitude", "Address", "Label", "NumSegments", "FromCity", "FromZip",
]  # fmt: skip
values = (
    st.text(max_size=40)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=600)
    | st.sampled_from(
        [
            "", " ", "+18017916516", "whatsapp:+12345678900", "whatsapp:", "0", "1", "10", "11",
            "-1", "9" * 5000, "nan", "inf", "1e308", "delivered", "read", "failed", "received",
            "undelivered", "queued", "https://api.twilio.com/x", "\x00", "\ud7ff", "\U0010ffff",
        ]
    )
)  # fmt: skip
twilio_pairs = st.lists(st.tuples(st.sampled_from(TWILIO_KEYS) | st.text(max_size=8), values))


@FUZZ
@given(st.binary(max_size=512))
def test_sms_random_bytes(body: bytes) -> None:
    check(sms, sms_request(body), SMS_CTX, unverifiable=NOT_UTF8)


@FUZZ
@given(twilio_pairs, st.booleans())
def test_sms_random_forms(pairs: list[tuple[str, str]], with_ids: bool) -> None:
    if with_ids:  # get past the required fields more often
        pairs = [("MessageSid", "SM1"), ("From", "+18017916516"), ("To", "+18446151430"), *pairs]
    check(sms, sms_request(urlencode(pairs).encode()), SMS_CTX)


@FUZZ
@given(st.sampled_from(sorted(SMS_REAL)), st.data())
def test_sms_mutated_real_bodies(name: str, data: st.DataObject) -> None:
    pairs = parse_qsl(SMS_REAL[name].decode(), keep_blank_values=True)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        action = data.draw(st.sampled_from(["delete", "replace", "add"]), label="action")
        if action == "add" or not pairs:
            pair = data.draw(st.tuples(st.sampled_from(TWILIO_KEYS), values), label="added")
            pairs.append(copy.deepcopy(pair))
            continue
        index = data.draw(st.integers(0, len(pairs) - 1), label="index")
        if action == "delete":
            del pairs[index]
        else:
            pairs[index] = (pairs[index][0], copy.deepcopy(data.draw(values, label="value")))
    check(sms, sms_request(urlencode(pairs).encode()), SMS_CTX)


@FUZZ
@given(st.sampled_from(sorted(SMS_REAL)), st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_sms_byte_level_corruption(name: str, at: int, junk: bytes) -> None:
    check(sms, sms_request(corrupt(SMS_REAL[name], at, junk)), SMS_CTX, unverifiable=NOT_UTF8)


# --- email: raw RFC 5322 ------------------------------------------------------------------------


def rfc822(body: bytes) -> RawRequest:
    headers = {"content-type": "message/rfc822", "authorization": f"Bearer {EMAIL_TOKEN}"}
    return post("https://x/", body, headers)


HEADER_NAMES = [
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID",
    "MIME-Version",
]  # fmt: skip
header_values = st.sampled_from(
    [
        "a@example.com", "\"Q\" <q@example.org>", "=?utf-8?q?J=C3=B6rg?= <j@x.de>",
        "=?bogus?b?!!!?=", "<>", "<a@b>", "<a@b> <c@d>", "multipart/mixed; boundary=b",
        "multipart/alternative; boundary=\"b\"", "text/html; charset=unicode_escape",
        "text/plain; charset=rot13", "text/plain; charset=utf-16", "base64",
        "quoted-printable", "attachment; filename*=utf-8''%E2%82%AC.pdf", "Mon, 1 Jan 0001",
        "Fri, 31 Dec 9999 23:59:59 -1200", "undisclosed-recipients:;", "(comment only)",
    ]
) | st.text(max_size=60)  # fmt: skip
body_chunks = st.sampled_from(
    [
        b"--b\n", b"--b--\n", b"\n", b"Content-Type: text/plain\n", b"Content-Type: text/html\n",
        b"Content-Disposition: attachment; filename=x.bin\n", b"<p>hi</p>", b"=E2=80=A6",
        b"aGVsbG8=", b"\xff\xfe\x00", b"<script>", b"&amp;&#0;&#x110000;",
    ]
) | st.binary(max_size=30)  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=8))
    if draw(st.booleans()):  # a usable sender, so parsing gets past the From check
        headers.insert(0, ("From", draw(st.sampled_from(["a@example.com", "B <b@x.org>"]))))
    head = "".join(f"{name}: {value}\n" for name, value in headers).encode("utf-8", "replace")
    return head + b"\n" + b"".join(draw(st.lists(body_chunks, max_size=12)))


@FUZZ
@given(st.binary(max_size=512))
def test_email_random_bytes(body: bytes) -> None:
    check(email, rfc822(body), EMAIL_CTX)


@FUZZ
@given(messages())
def test_email_random_messages(body: bytes) -> None:
    check(email, rfc822(body), EMAIL_CTX)


@FUZZ
@given(st.sampled_from(sorted(EMAIL_REAL)), st.data())
def test_email_mutated_real_messages(name: str, data: st.DataObject) -> None:
    lines = EMAIL_REAL[name].split(b"\n")
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        index = data.draw(st.integers(0, len(lines) - 1), label="line")
        action = data.draw(st.sampled_from(["delete", "duplicate", "replace", "value"]))
        if action == "delete" and len(lines) > 1:
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "replace":
            lines[index] = copy.deepcopy(data.draw(body_chunks, label="chunk"))
        elif b":" in lines[index]:
            value = copy.deepcopy(data.draw(header_values, label="value"))
            lines[index] = lines[index].split(b":", 1)[0] + b": " + value.encode()
    check(email, rfc822(b"\n".join(lines)), EMAIL_CTX)


@FUZZ
@given(st.sampled_from(sorted(EMAIL_REAL)), st.integers(0, 3000), st.binary(min_size=1, max_size=8))
def test_email_byte_level_corruption(name: str, at: int, junk: bytes) -> None:
    check(email, rfc822(corrupt(EMAIL_REAL[name], at, junk)), EMAIL_CTX)


# --- email: Mailgun -----------------------------------------------------------------------------


def mailgun_sign(fields: dict[str, str]) -> dict[str, str]:
    signed = dict(fields)
    message = (signed.get("timestamp", "") + signed.get("token", "")).encode()
    signed["signature"] = hmac.new(SIGNING_KEY.encode(), message, hashlib.sha256).hexdigest()
    return signed


def multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "fuzzBoundary"
    out = b""
    for name, value in fields.items():
        disposition = f'form-data; name="{name}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value.encode() + b"\r\n"
    for filename, content in files:
        disposition = f'form-data; name="attachment"; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


MAILGUN_KEYS = [
    "from", "sender", "subject", "recipient", "body-plain", "body-html", "stripped-text",
    "stripped-html", "message-headers", "body-mime", "timestamp", "token", "Message-Id",
]  # fmt: skip
mailgun_values = (
    header_values
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
    | st.sampled_from(
        [
            "[]", "{}", "null", "[[1, 2]]", '[["Message-Id", "<x@y>"], ["Date", "nope"]]',
            '[["From", "x"]', "1461261330", "1461261330.5", "-1", "9" * 40,
        ]
    )
    | messages().map(lambda b: b.decode("utf-8", "replace"))
)  # fmt: skip


@FUZZ
@given(st.sampled_from(sorted(MAILGUN_REAL)), st.data())
def test_mailgun_mutated_forms(name: str, data: st.DataObject) -> None:
    fields = copy.deepcopy(MAILGUN_REAL[name])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        key = data.draw(st.sampled_from(sorted(fields) + MAILGUN_KEYS), label="key")
        if data.draw(st.booleans(), label="delete"):
            fields.pop(key, None)
        else:
            fields[key] = copy.deepcopy(data.draw(mailgun_values, label="value"))
    signed = mailgun_sign(fields)
    if data.draw(st.booleans(), label="multipart"):
        files = data.draw(st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=50))))
        body, content_type = multipart(signed, copy.deepcopy(files))
    else:
        body, content_type = urlencode(signed).encode(), FORM
    request = post("https://x/", body, {"content-type": content_type})
    # A mutated timestamp or token may make the (re-computed) signature stale: 401 is fine.
    check(email, request, EMAIL_CTX, unverifiable="Mailgun")


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([FORM, "multipart/form-data; boundary=b"]))
def test_mailgun_random_bodies_with_the_bearer(body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type, "authorization": f"Bearer {EMAIL_TOKEN}"}
    check(email, post("https://x/", body, headers), EMAIL_CTX)
