"""Signed requests for every transport, posted through the gateway or handed to the adapters.

Each provider's own scheme is reproduced here independently of the adapters (except Twilio's,
whose `compute_signature` is checked against Twilio's published test vector in the unit tests):
- WhatsApp: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>`;
- Twilio: `X-Twilio-Signature` over the URL the gateway sees (the test client's base URL is
  `https://gateway.test`) or the channel's `public_url`;
- email: `Authorization: Bearer <token>`, or Mailgun's hex HMAC-SHA256(signing_key,
  timestamp + token) with a current timestamp;
- Telegram: `X-Telegram-Bot-Api-Secret-Token: <the channel's secret_token>`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg
import httpx

from ingest.config import Transport
from ingest.transports import TransportAdapter, load_adapters
from ingest.transports.base import Channel, Event, ParseContext, RawRequest
from ingest.transports.sms import compute_signature
from tests.integration.pipeline import Gateway, TenantChannel, new_channel

PAYLOADS = Path(__file__).parent.parent / "payloads"
BASE_URL = "https://gateway.test"
APP_SECRET = "it-app-secret-0123456789abcdef"
AUTH_TOKEN = "it-twilio-auth-token-0123456789ab"
SIGNING_KEY = "it-mailgun-signing-key-0123456789"
FORM = "application/x-www-form-urlencoded"
TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# The configuration each transport's channel needs to check the signatures made here.
CREDENTIALS: dict[Transport, dict[str, str]] = {
    "telegram": {},  # the channel's secret_token is generated
    "whatsapp": {"app_secret": APP_SECRET},
    "sms": {"auth_token": AUTH_TOKEN},
    "email": {"signing_key": SIGNING_KEY},
}


async def signed_channel(
    pool: asyncpg.Pool, transport: Transport, *, tenant_id: uuid.UUID | None = None, **config: str
) -> TenantChannel:
    """A channel that accepts this module's signatures (plus any other `config`), of a new
    tenant or of `tenant_id`."""
    return await new_channel(
        pool, transport, tenant_id=tenant_id, **CREDENTIALS[transport], **config
    )


def _client(gateway: Gateway | httpx.AsyncClient) -> httpx.AsyncClient:
    """The gateway fixture's client, or a client of another gateway app (a small body limit)."""
    return gateway if isinstance(gateway, httpx.AsyncClient) else gateway.client


# --- WhatsApp ---------------------------------------------------------------------------------


def wa_payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "whatsapp" / name).read_text(encoding="utf-8"))
    return data


def wa_raw(name: str) -> bytes:
    """A fixture's bytes exactly as stored (Meta signs the escaped-unicode body)."""
    return (PAYLOADS / "whatsapp" / name).read_bytes()


def wa_signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def wa_body(body: bytes | dict[str, Any]) -> bytes:
    return json.dumps(body).encode() if isinstance(body, dict) else body


def wa_headers(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "X-Hub-Signature-256": wa_signature(body)}


# The sender of the pywa-based fixtures (wa_id 972987654321).
PYWA_SENDER = "972987654321"


def wa_element(
    kind: str,
    content: dict[str, Any],
    *,
    wamid: str,
    timestamp: int,
    sender: str = PYWA_SENDER,
    sender_field: str = "from",
) -> dict[str, Any]:
    """One message element: its `kind` object is `content`; `sender_field` may be the newer
    `from_user_id`."""
    return {
        sender_field: sender,
        "id": wamid,
        "timestamp": str(timestamp),
        "type": kind,
        kind: content,
    }


def wa_text(text: str, **element: Any) -> dict[str, Any]:
    """A text message element; `element` as for `wa_element`."""
    return wa_element("text", {"body": text}, **element)


def wa_message(message: dict[str, Any], *, contact: dict[str, Any] | None = None) -> dict[str, Any]:
    """One message element in the envelope (and with the contact) of the pywa-based fixtures."""
    envelope = wa_payload("image_url.json")
    value = envelope["entry"][0]["changes"][0]["value"]
    value["messages"] = [message]
    if contact is not None:
        value["contacts"] = [contact]
    return envelope


def wa_statuses(*statuses: dict[str, Any]) -> dict[str, Any]:
    envelope = wa_payload("status_read.json")
    envelope["entry"][0]["changes"][0]["value"]["statuses"] = [copy.deepcopy(s) for s in statuses]
    return envelope


async def post_whatsapp(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    body: bytes | dict[str, Any],
    *,
    signature: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    data = wa_body(body)
    sent = wa_headers(data)
    if signature is not None:
        sent["X-Hub-Signature-256"] = signature
    sent.update(headers or {})
    return await _client(gateway).post(channel.path, content=data, headers=sent)


# --- Twilio SMS -------------------------------------------------------------------------------


def sms_fields(name: str, **changes: str) -> list[tuple[str, str]]:
    """A capture's form fields in their order, with some values replaced (or added)."""
    raw = (PAYLOADS / "sms" / f"{name}.form").read_text(encoding="utf-8")
    pairs = [(k, changes.get(k, v)) for k, v in parse_qsl(raw, keep_blank_values=True)]
    known = {k for k, _ in pairs}
    return pairs + [(k, v) for k, v in changes.items() if k not in known]


def twilio_signature(
    channel: TenantChannel, params: list[tuple[str, str]], url: str | None = None
) -> str:
    return compute_signature(AUTH_TOKEN, url or BASE_URL + channel.path, params)


def sms_headers(
    channel: TenantChannel, params: list[tuple[str, str]], url: str | None = None
) -> dict[str, str]:
    return {"content-type": FORM, "X-Twilio-Signature": twilio_signature(channel, params, url)}


async def post_sms(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    params: list[tuple[str, str]],
    *,
    signature: str | None = None,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = sms_headers(channel, params, signed_url)
    if signature is not None:
        sent["X-Twilio-Signature"] = signature
    sent.update(headers or {})
    return await _client(gateway).post(
        channel.path, content=urlencode(params).encode(), headers=sent
    )


# --- email ------------------------------------------------------------------------------------


def eml(name: str) -> bytes:
    return (PAYLOADS / "email" / f"{name}.eml").read_bytes()


def mailgun_fields(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((PAYLOADS / "email" / f"{name}.json").read_text())
    return data


def mailgun_signed(
    fields: dict[str, str], key: str = SIGNING_KEY, timestamp: int | None = None
) -> dict[str, str]:
    """The fields with a fresh token, a current timestamp and Mailgun's signature over both."""
    signed = dict(fields)
    signed["timestamp"] = str(int(time.time()) if timestamp is None else timestamp)
    signed["token"] = uuid.uuid4().hex + uuid.uuid4().hex[:18]
    message = (signed["timestamp"] + signed["token"]).encode()
    signed["signature"] = hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
    return signed


def email_headers(
    channel: TenantChannel, *, token: str | None = None, content_type: str = "message/rfc822"
) -> dict[str, str]:
    return {
        "content-type": content_type,
        "authorization": f"Bearer {token if token is not None else channel.config['token']}",
    }


async def post_email(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    raw: bytes,
    *,
    token: str | None = None,
    content_type: str = "message/rfc822",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = email_headers(channel, token=token, content_type=content_type)
    sent.update(headers or {})
    return await _client(gateway).post(channel.path, content=raw, headers=sent)


async def post_mailgun(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    fields: dict[str, str],
    *,
    sign: bool = True,
) -> httpx.Response:
    """A Mailgun form post, signed now with SIGNING_KEY unless `sign` is False (the fields are
    signed otherwise, or deliberately not)."""
    sent = mailgun_signed(fields) if sign else fields
    return await _client(gateway).post(
        channel.path, content=urlencode(sent).encode(), headers={"content-type": FORM}
    )


# --- Telegram ---------------------------------------------------------------------------------


def tg_payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "telegram" / name).read_text(encoding="utf-8"))
    return data


def telegram_headers(channel: TenantChannel, secret: str | None = None) -> dict[str, str]:
    return {
        "content-type": "application/json",
        TELEGRAM_SECRET_HEADER: channel.config["secret_token"] if secret is None else secret,
    }


async def post_telegram(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    update: bytes | dict[str, Any],
    *,
    secret: str | None = None,
) -> httpx.Response:
    data = json.dumps(update).encode() if isinstance(update, dict) else update
    return await _client(gateway).post(
        channel.path, content=data, headers=telegram_headers(channel, secret)
    )


# --- without the gateway ----------------------------------------------------------------------


@functools.cache
def _adapters() -> dict[Transport, TransportAdapter]:
    return load_adapters()


def adapter_events(
    channel: TenantChannel, transport: Transport, headers: dict[str, str], body: bytes
) -> list[Event]:
    """The events the transport's adapter makes of one POST to the channel, as the gateway
    would call it: for tests that publish or write events themselves."""
    request = RawRequest(
        "POST", BASE_URL + channel.path, {k.lower(): v for k, v in headers.items()}, body
    )
    context = ParseContext(
        Channel(channel.channel_id, channel.tenant_id, transport, channel.config),
        datetime.now(UTC),
    )
    return list(_adapters()[transport].handle(request, context).events)
