"""Hostile input at the HTTP level, every transport, through the real gateway app and publisher.

Each refusal has its exact status and a JSON `{"error": "..."}` body, never a 500, and publishes
nothing (`gateway.publisher.published` unchanged): forged, unsigned or unverifiable requests
401/403, unknown channels and channels of another transport 404, bodies over the transport's
limit 413 (a second gateway app with small limits). A malformed or incomplete body that is
authenticated is never refused: it is answered 200 and kept on the dead-letter topic (one
`RawWebhook` with the exact bytes and the reason), beside the events of its valid siblings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.events import RawWebhook
from ingest.gateway import create_app
from ingest.transports import load_adapters
from ingest.transports.sms import compute_signature
from tests.integration.pipeline import Gateway, TenantChannel
from tests.integration.rows import wait_messages
from tests.integration.signing import (
    BASE_URL,
    FORM,
    TELEGRAM_SECRET_HEADER,
    email_headers,
    eml,
    mailgun_fields,
    mailgun_signed,
    post_email,
    post_mailgun,
    post_sms,
    post_telegram,
    post_whatsapp,
    sms_fields,
    sms_headers,
    telegram_headers,
    wa_headers,
    wa_payload,
    wa_raw,
    wa_signature,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

SMALL_LIMIT = 2048


@dataclass
class Channels:
    telegram: TenantChannel
    whatsapp: TenantChannel
    sms: TenantChannel
    email: TenantChannel

    def of(self, transport: str) -> TenantChannel:
        channel: TenantChannel = getattr(self, transport)
        return channel


@pytest.fixture
def channels(
    telegram: TenantChannel, whatsapp: TenantChannel, sms: TenantChannel, email: TenantChannel
) -> Channels:
    return Channels(telegram, whatsapp, sms, email)


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"].strip()


Send = Callable[[httpx.AsyncClient, Channels], Awaitable[httpx.Response]]


def signed_wa(body: bytes | str | dict[str, Any], content_type: str = "application/json") -> Send:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    data = data.encode() if isinstance(data, str) else data

    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        return await post_whatsapp(client, c.whatsapp, data, headers={"content-type": content_type})

    return send


def wa_batch_with(**message: Any) -> dict[str, Any]:
    """The batch fixture with its reaction replaced: one bad message among good ones."""
    batch = wa_payload("batch.json")
    value = batch["entry"][0]["changes"][2]["value"]
    value["messages"][1] = {**value["messages"][1], **message}
    return batch


def without(key: str, data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def sms_send(
    params: list[tuple[str, str]],
    *,
    signed_url: str | None = None,
    content_type: str = FORM,
    body: bytes | None = None,
) -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        if body is not None:
            headers = sms_headers(c.sms, params)
            headers["content-type"] = content_type
            return await client.post(c.sms.path, content=body, headers=headers)
        return await post_sms(
            client,
            c.sms,
            params,
            signed_url=signed_url,
            headers={"content-type": content_type},
        )

    return send


def email_send(
    raw: bytes, *, token: str | None = None, content_type: str = "message/rfc822"
) -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        return await post_email(client, c.email, raw, token=token, content_type=content_type)

    return send


def mailgun_send(fields: dict[str, str], *, sign: bool = True) -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        return await post_mailgun(client, c.email, fields, sign=sign)

    return send


def raw_post(transport: str, body: bytes, headers: dict[str, str]) -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        return await client.post(c.of(transport).path, content=body, headers=headers)

    return send


def telegram_send(body: bytes, content_type: str = "application/json") -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        headers = telegram_headers(c.telegram) | {"content-type": content_type}
        return await client.post(c.telegram.path, content=body, headers=headers)

    return send


def handshake(**params: str) -> Send:
    async def send(client: httpx.AsyncClient, c: Channels) -> httpx.Response:
        return await client.get(c.whatsapp.path, params=params)

    return send


WA_TEXT = wa_raw("text_official.json")
SMS_TEXT = sms_fields("basic_text")
MAILGUN = mailgun_fields("mailgun_basics")
TELEGRAM_TEXT = json.dumps({"update_id": 1, "message": {"message_id": 1}}).encode()

REFUSALS: dict[str, tuple[Send, int, str]] = {
    # --- credentials: 401 / 403 ---------------------------------------------------------------
    "whatsapp wrong app secret": (
        lambda cl, c: post_whatsapp(cl, c.whatsapp, WA_TEXT, signature=wa_signature(WA_TEXT, "x")),
        401,
        "invalid signature",
    ),
    "whatsapp missing signature": (
        raw_post("whatsapp", WA_TEXT, {"content-type": "application/json"}),
        401,
        "missing X-Hub-Signature-256",
    ),
    "whatsapp malformed signature": (
        lambda cl, c: post_whatsapp(cl, c.whatsapp, WA_TEXT, signature="sha1=" + "0" * 40),
        401,
        "malformed X-Hub-Signature-256",
    ),
    "whatsapp body changed after signing": (
        lambda cl, c: post_whatsapp(
            cl,
            c.whatsapp,
            WA_TEXT.replace(b"another color", b"a forged color"),
            signature=wa_signature(WA_TEXT),
        ),
        401,
        "invalid signature",
    ),
    "whatsapp handshake wrong verify token": (
        handshake(**{"hub.mode": "subscribe", "hub.verify_token": "no", "hub.challenge": "42"}),
        403,
        "invalid verify token",
    ),
    "whatsapp handshake without mode": (
        handshake(**{"hub.verify_token": "no", "hub.challenge": "42"}),
        403,
        "hub.mode must be subscribe",
    ),
    "sms wrong auth token": (
        lambda cl, c: post_sms(
            cl,
            c.sms,
            SMS_TEXT,
            signature=compute_signature("another-auth-token", BASE_URL + c.sms.path, SMS_TEXT),
        ),
        401,
        "invalid signature",
    ),
    "sms missing signature": (
        raw_post("sms", urlencode(SMS_TEXT).encode(), {"content-type": FORM}),
        401,
        "missing X-Twilio-Signature",
    ),
    "sms signed over another url": (
        sms_send(SMS_TEXT, signed_url="https://attacker.example/webhooks/sms/x"),
        401,
        "invalid signature",
    ),
    "sms parameter changed after signing": (
        lambda cl, c: cl.post(
            c.sms.path,
            content=urlencode([(k, "forged" if k == "Body" else v) for k, v in SMS_TEXT]).encode(),
            headers=sms_headers(c.sms, SMS_TEXT),
        ),
        401,
        "invalid signature",
    ),
    "email missing bearer": (
        raw_post("email", eml("plain"), {"content-type": "message/rfc822"}),
        401,
        "missing bearer token",
    ),
    "email wrong bearer": (
        email_send(eml("plain"), token="not-the-token"),
        401,
        "invalid bearer token",
    ),
    "email basic auth instead of bearer": (
        raw_post(
            "email",
            eml("plain"),
            {"content-type": "message/rfc822", "authorization": "Basic YXBpOmtleQ=="},
        ),
        401,
        "missing bearer token",
    ),
    "mailgun signed with another key": (
        mailgun_send(mailgun_signed(MAILGUN, key="another-signing-key"), sign=False),
        401,
        "invalid Mailgun signature",
    ),
    "mailgun stale timestamp": (
        mailgun_send(mailgun_signed(MAILGUN, timestamp=int(time.time()) - 3600), sign=False),
        401,
        "stale Mailgun timestamp",
    ),
    "mailgun form without signature": (
        mailgun_send(MAILGUN, sign=False),
        401,
        "missing Mailgun signature",
    ),
    "telegram wrong secret": (
        lambda cl, c: post_telegram(cl, c.telegram, TELEGRAM_TEXT, secret="wrong"),
        401,
        "invalid secret token",
    ),
    # --- a body the signature cannot be computed over: unauthenticated, so refused unread ---
    "sms invalid utf-8 form": (
        sms_send([], body=b"Body=\xff\xfe&From=%2B1"),
        401,
        "invalid signature: form body is not valid UTF-8",
    ),
    "sms json content type": (
        sms_send(SMS_TEXT, content_type="application/json"),
        401,
        "invalid signature: only application/x-www-form-urlencoded bodies can be verified",
    ),
}

# Authenticated, but the content cannot become events: 200, and kept with (kind, reason, element)
# ("*": the parser's own detail follows). For a WhatsApp batch, the valid siblings are published.
KEPT: dict[str, tuple[Send, str, str, str | None]] = {
    "whatsapp malformed json": (
        signed_wa(b'{"object": "whatsapp_business_account", '),
        "malformed",
        "malformed JSON: *",
        None,
    ),
    "whatsapp json array": (signed_wa(b"[]"), "malformed", "expected a JSON object", None),
    "whatsapp invalid utf-8": (
        signed_wa(b'{"object": "\xff"}'),
        "malformed",
        "malformed JSON: *",
        None,
    ),
    "whatsapp wrong content type": (
        signed_wa(WA_TEXT, "text/plain"),
        "malformed",
        "expected application/json",
        None,
    ),
    "whatsapp form content type": (
        signed_wa(WA_TEXT, FORM),
        "malformed",
        "expected application/json",
        None,
    ),
    "whatsapp missing entry": (
        signed_wa({"object": "whatsapp_business_account"}),
        "unprocessable",
        "entry: field required",
        None,
    ),
    "whatsapp other object": (
        signed_wa({"object": "page", "entry": []}),
        "unprocessable",
        "object: input should be 'whatsapp_business_account'",
        None,
    ),
    "whatsapp missing metadata": (
        signed_wa(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": {}}]}],
            }
        ),
        "unprocessable",
        "entry.0.changes.0.value.metadata: field required",
        None,
    ),
    # One bad message among good ones: it alone is kept, its siblings are published.
    "whatsapp batch with a message without id": (
        signed_wa(wa_batch_with(id=None)),
        "unprocessable",
        "entry.0.changes.2.value.messages.1.id: input should be a valid string",
        "entry.0.changes.2.value.messages.1",
    ),
    "whatsapp batch with a bad timestamp": (
        signed_wa(wa_batch_with(timestamp="yesterday")),
        "unprocessable",
        "entry.0.changes.2.value.messages.1.timestamp: value error, "
        "expected Unix seconds as a string of digits",
        "entry.0.changes.2.value.messages.1",
    ),
    "whatsapp batch with a message naming nobody": (
        signed_wa(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "metadata": {"phone_number_id": "1"},
                                    "messages": [
                                        {
                                            "id": "wamid.x",
                                            "timestamp": "1",
                                            "type": "text",
                                            "text": {"body": "who am I"},
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            }
        ),
        "no_sender",
        "entry.0.changes.0.value.messages.0: message names no sender (from / user_id)",
        "entry.0.changes.0.value.messages.0",
    ),
    "sms missing MessageSid": (
        sms_send([(k, v) for k, v in SMS_TEXT if k != "MessageSid"]),
        "unprocessable",
        "missing MessageSid",
        None,
    ),
    "sms missing From": (
        sms_send([(k, v) for k, v in SMS_TEXT if k != "From"]),
        "unprocessable",
        "missing From",
        None,
    ),
    "sms status callback without To": (
        sms_send([(k, v) for k, v in sms_fields("status_delivered") if k != "To"]),
        "unprocessable",
        "missing To",
        None,
    ),
    "email wrong content type": (
        email_send(eml("plain"), content_type="text/plain"),
        "malformed",
        "expected message/rfc822 or a Mailgun form post",
        None,
    ),
    "email json content type": (
        email_send(b"{}", content_type="application/json"),
        "malformed",
        "expected message/rfc822 or a Mailgun form post",
        None,
    ),
    "email without From": (
        email_send(b"Subject: hi\r\n\r\nno sender\r\n"),
        "no_sender",
        "email has no sender address (From, Reply-To, Sender)",
        None,
    ),
    "email garbage bytes": (
        email_send(b"\x00\xff\xfe garbage \x80\x81\r\n\r\n\x00"),
        "no_sender",
        "email has no sender address (From, Reply-To, Sender)",
        None,
    ),
    "email multipart without boundary": (
        email_send(b"--x\r\n\r\n", content_type="multipart/form-data"),
        "malformed",
        "malformed multipart/form-data body",
        None,
    ),
    "email multipart with a missing boundary": (
        email_send(b"no parts here", content_type="multipart/form-data; boundary=zzz"),
        "malformed",
        "malformed multipart/form-data body",
        None,
    ),
    "email form invalid utf-8": (
        email_send(b"from=\xff\xfe", content_type=FORM),
        "malformed",
        "form body is not valid UTF-8",
        None,
    ),
    "mailgun form without From": (
        mailgun_send({"body-plain": "who sent this", "message-headers": "[]"}),
        "no_sender",
        "email has no sender address (From, Reply-To, Sender)",
        None,
    ),
    "telegram malformed json": (
        telegram_send(b"{not json"),
        "malformed",
        "malformed JSON: *",
        None,
    ),
    "telegram wrong content type": (
        telegram_send(b"{}", "text/plain"),
        "malformed",
        "expected application/json",
        None,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_with_a_json_error_and_nothing_published(
    gateway: Gateway, channels: Channels, case: str
) -> None:
    send, status, reason = REFUSALS[case]
    before = len(gateway.publisher.published)
    response = await send(gateway.client, channels)
    assert_refused(response, status)
    assert_reason(response.json()["error"], reason)
    assert len(gateway.publisher.published) == before


def kept_since(gateway: Gateway, before: int) -> list[RawWebhook]:
    return [r for r in gateway.publisher.published[before:] if isinstance(r, RawWebhook)]


def assert_reason(reason: str, expected: str) -> None:
    if expected.endswith("*"):  # the parser's own detail follows
        assert reason.startswith(expected[:-1]), reason
        assert len(reason) > len(expected), reason
    else:
        assert reason == expected


@pytest.mark.parametrize("case", list(KEPT))
async def test_authenticated_but_unprocessable_is_200_and_kept(
    gateway: Gateway, channels: Channels, case: str
) -> None:
    send, kind, reason, element = KEPT[case]
    before = len(gateway.publisher.published)
    response = await send(gateway.client, channels)
    assert response.status_code == 200, response.text
    transport = case.split()[0].replace("mailgun", "email")
    if transport == "sms":
        assert response.headers["content-type"].startswith("application/xml")
    else:
        assert response.json() == {"ok": True}
    [kept] = kept_since(gateway, before)
    assert (kept.reason_kind, kept.element) == (kind, element)
    assert_reason(kept.reason, reason)
    channel = channels.of(transport)
    assert (kept.channel_id, kept.tenant_id, kept.transport) == (
        channel.channel_id,
        channel.tenant_id,
        transport,
    )
    assert kept.correlation_id == response.headers["x-correlation-id"]
    body = kept.inline_bytes()
    if element is None:
        assert body == response.request.content  # the verified bytes, exactly
    else:
        assert body is not None
        alone = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"]
        assert len(alone) == 1
    others = len(gateway.publisher.published) - before - 1
    # A batch's valid siblings are published beside it; anything else publishes only the record.
    assert others == (4 if element and "batch" in case and "nobody" not in case else 0)


async def test_truncated_signed_whatsapp_bodies_are_kept_never_refused(
    gateway: Gateway, channels: Channels
) -> None:
    before = len(gateway.publisher.published)
    cuts = list(range(0, len(WA_TEXT) - 1, max(1, len(WA_TEXT) // 25)))
    for cut in cuts:
        body = WA_TEXT[:cut].rstrip()
        response = await post_whatsapp(gateway, channels.whatsapp, body)
        assert response.status_code == 200, response.text
    kept = kept_since(gateway, before)
    assert len(gateway.publisher.published) - before == len(cuts)  # nothing but the records
    assert [k.reason_kind for k in kept] == ["malformed"] * len(cuts)
    assert [k.inline_bytes() for k in kept] == [WA_TEXT[:cut].rstrip() for cut in cuts]


# --- 404 --------------------------------------------------------------------------------------

TRANSPORTS = ("telegram", "whatsapp", "sms", "email")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unknown_channel_and_channel_of_another_transport_are_404(
    gateway: Gateway, channels: Channels, transport: str
) -> None:
    before = len(gateway.publisher.published)
    others = [channels.of(t) for t in TRANSPORTS if t != transport]
    paths = [
        f"/webhooks/{transport}/{uuid.uuid4()}",
        f"/webhooks/{transport}/not-a-uuid",
        *(f"/webhooks/{transport}/{o.channel_id}" for o in others),
    ]
    for path in paths:
        # Credentials that would be valid for the channel of the path, had it this transport.
        response = await gateway.client.post(
            path,
            content=WA_TEXT,
            headers={
                "content-type": "application/json",
                "X-Hub-Signature-256": wa_signature(WA_TEXT),
                "authorization": f"Bearer {channels.email.config['token']}",
                TELEGRAM_SECRET_HEADER: channels.telegram.config["secret_token"],
            },
        )
        assert_refused(response, 404)
    handshake_response = await gateway.client.get(
        f"/webhooks/whatsapp/{channels.sms.channel_id}",
        params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"},
    )
    assert_refused(handshake_response, 404)
    unknown_transport = await gateway.client.post(
        f"/webhooks/fax/{channels.of(transport).channel_id}", content=b"{}"
    )
    assert_refused(unknown_transport, 404)
    assert len(gateway.publisher.published) == before


async def test_disabled_channel_is_404_with_valid_credentials(
    gateway: Gateway, channels: Channels, pool: asyncpg.Pool
) -> None:
    await pool.execute(
        "UPDATE ingest_channels SET enabled = FALSE WHERE id = $1", channels.whatsapp.channel_id
    )
    before = len(gateway.publisher.published)
    assert_refused(await post_whatsapp(gateway, channels.whatsapp, WA_TEXT), 404)
    assert len(gateway.publisher.published) == before


@pytest.mark.parametrize("transport", ["telegram", "sms", "email"])
async def test_get_on_a_transport_without_handshake_is_405(
    gateway: Gateway, channels: Channels, transport: str
) -> None:
    response = await gateway.client.get(channels.of(transport).path)
    assert_refused(response, 405)
    assert response.headers["allow"] == "POST"


# --- 413 --------------------------------------------------------------------------------------


@pytest.fixture
async def small(settings: Settings, pool: asyncpg.Pool, gateway: Gateway) -> AsyncIterator[Any]:
    """A second gateway app with 2 KiB limits, on the same (recording) publisher."""
    limits = {f"max_body_bytes_{t}": SMALL_LIMIT for t in TRANSPORTS}
    small_settings = settings.model_copy(update=limits)
    app = create_app(
        small_settings,
        publisher=gateway.publisher,
        channels=ChannelDirectory(small_settings, pool),
        adapters=load_adapters(),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


def padded_wa() -> bytes:
    """A valid, signed-able WhatsApp body just over the limit."""
    body = wa_payload("text_official.json")
    text = body["entry"][0]["changes"][0]["value"]["messages"][0]["text"]
    text["body"] = "x"
    size = len(json.dumps(body).encode())
    text["body"] = "x" * (SMALL_LIMIT + 1 - size + 1)
    data = json.dumps(body).encode()
    assert len(data) == SMALL_LIMIT + 1
    return data


def oversized(transport: str) -> Callable[[httpx.AsyncClient, Channels, bool], Awaitable[Any]]:
    """A request with valid credentials and a body of SMALL_LIMIT + 1 bytes; `stream` sends it
    chunked, without a Content-Length, so only the streaming check can stop it."""

    async def send(client: httpx.AsyncClient, c: Channels, stream: bool) -> httpx.Response:
        channel = c.of(transport)
        if transport == "whatsapp":
            body = padded_wa()
            headers = wa_headers(body)
        elif transport == "sms":
            base = urlencode(SMS_TEXT)
            params = [*SMS_TEXT, ("Pad", "x" * (SMALL_LIMIT + 1 - len(base) - len("&Pad=")))]
            body = urlencode(params).encode()
            headers = sms_headers(channel, params)
        elif transport == "email":
            raw = eml("plain")
            body = raw + b"x" * (SMALL_LIMIT + 1 - len(raw))
            headers = email_headers(channel)
        else:
            update = {"update_id": 1, "message": {"message_id": 1, "text": ""}}
            base_len = len(json.dumps(update).encode())
            update["message"]["text"] = "x" * (SMALL_LIMIT + 1 - base_len)  # type: ignore[index]
            body = json.dumps(update).encode()
            headers = telegram_headers(channel)
        assert len(body) == SMALL_LIMIT + 1
        if not stream:
            return await client.post(channel.path, content=body, headers=headers)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        return await client.post(channel.path, content=chunks(), headers=headers)

    return send


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_body_over_the_transport_limit_is_413(
    gateway: Gateway, small: httpx.AsyncClient, channels: Channels, transport: str, stream: bool
) -> None:
    before = len(gateway.publisher.published)
    response = await oversized(transport)(small, channels, stream)
    assert_refused(response, 413)
    assert response.json() == {"error": "body too large"}
    assert len(gateway.publisher.published) == before


async def test_small_gateway_still_takes_bodies_within_its_limit(
    gateway: Gateway, small: httpx.AsyncClient, channels: Channels, pool: asyncpg.Pool
) -> None:
    """The 413s above are about size: the same gateway accepts a normal request."""
    assert len(WA_TEXT) < SMALL_LIMIT
    response = await post_whatsapp(small, channels.whatsapp, WA_TEXT)
    assert response.status_code == 200, response.text
    rows = await wait_messages(pool, channels.whatsapp, 1)
    assert [m["message"] for m in rows["messages"]] == ["Does it come in another color?"]
