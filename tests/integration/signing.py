"""Signed requests for every transport, posted through the gateway, and the per-tenant rows the
pipeline tests assert on.

Each provider's own scheme is reproduced here independently of the adapters (except Twilio's,
whose `compute_signature` is checked against Twilio's published test vector in the unit tests):
- WhatsApp: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>`;
- Twilio: `X-Twilio-Signature` over the URL the gateway sees (the test client's base URL is
  `https://gateway.test`) or the channel's `public_url`;
- email: `Authorization: Bearer <token>`, or Mailgun's hex HMAC-SHA256(signing_key,
  timestamp + token) with a current timestamp.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg
import httpx

from ingest.transports.sms import compute_signature
from tests.integration.pipeline import Gateway, TenantChannel
from tests.support import eventually

PAYLOADS = Path(__file__).parent.parent / "payloads"
BASE_URL = "https://gateway.test"
APP_SECRET = "it-app-secret-0123456789abcdef"
AUTH_TOKEN = "it-twilio-auth-token-0123456789ab"
SIGNING_KEY = "it-mailgun-signing-key-0123456789"
FORM = "application/x-www-form-urlencoded"


def _client(gateway: Gateway | httpx.AsyncClient) -> httpx.AsyncClient:
    """The gateway fixture's client, or a client of another gateway app (a small body limit)."""
    client = gateway if isinstance(gateway, httpx.AsyncClient) else gateway.client
    return client


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
    sent = {"content-type": "application/json", "X-Hub-Signature-256": wa_signature(data)}
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


async def post_sms(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    params: list[tuple[str, str]],
    *,
    signature: str | None = None,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {
        "content-type": FORM,
        "X-Twilio-Signature": signature or twilio_signature(channel, params, signed_url),
    }
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


async def post_email(
    gateway: Gateway | httpx.AsyncClient,
    channel: TenantChannel,
    raw: bytes,
    *,
    token: str | None = None,
    content_type: str = "message/rfc822",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {
        "content-type": content_type,
        "authorization": f"Bearer {token if token is not None else channel.config['token']}",
    }
    sent.update(headers or {})
    return await _client(gateway).post(channel.path, content=raw, headers=sent)


async def post_mailgun(
    gateway: Gateway | httpx.AsyncClient, channel: TenantChannel, fields: dict[str, str]
) -> httpx.Response:
    return await _client(gateway).post(
        channel.path, content=urlencode(fields).encode(), headers={"content-type": FORM}
    )


# --- rows -------------------------------------------------------------------------------------


async def tenant_rows(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> dict[str, list[asyncpg.Record]]:
    """Every row the pipeline writes for one tenant, in a stable order, read from one snapshot
    (separate READ COMMITTED reads could see a message committed after its empty client list)."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        return {
            "clients": await conn.fetch(
                "SELECT * FROM crm_clients WHERE tenant_id = $1 ORDER BY id", tenant_id
            ),
            "contacts": await conn.fetch(
                """SELECT cc.* FROM crm_client_contacts cc JOIN crm_clients c ON c.id = cc.client_id
                   WHERE c.tenant_id = $1 ORDER BY cc.id""",
                tenant_id,
            ),
            "chats": await conn.fetch(
                "SELECT * FROM crm_chats WHERE tenant_id = $1 ORDER BY id", tenant_id
            ),
            "members": await conn.fetch(
                "SELECT * FROM crm_chat_members WHERE tenant_id = $1 ORDER BY created_at, id",
                tenant_id,
            ),
            "messages": await conn.fetch(
                """SELECT m.* FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
                   WHERE c.tenant_id = $1 ORDER BY m.sent_at, m.id""",
                tenant_id,
            ),
            "attachments": await conn.fetch(
                """SELECT a.message_id, a.upload_id, u.tenant_id, u.hash, u.path, u.name, u.size,
                          u.mimetype
                   FROM crm_chat_message_attachments a
                   JOIN core_uploads u ON u.id = a.upload_id
                   JOIN crm_chat_messages m ON m.id = a.message_id
                   JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1
                   ORDER BY a.id""",
                tenant_id,
            ),
        }


async def tenant_counts(pool: asyncpg.Pool, tenant: TenantChannel) -> dict[str, int]:
    """Row counts of every crm_* table, core_uploads and the ingest bookkeeping, for one tenant
    (crm_client_contacts and crm_chat_message_attachments have no tenant column: joined)."""
    row = await pool.fetchrow(
        """SELECT
             (SELECT count(*) FROM crm_clients WHERE tenant_id = $1) AS crm_clients,
             (SELECT count(*) FROM crm_client_contacts cc JOIN crm_clients c ON c.id = cc.client_id
               WHERE c.tenant_id = $1) AS crm_client_contacts,
             (SELECT count(*) FROM crm_chats WHERE tenant_id = $1) AS crm_chats,
             (SELECT count(*) FROM crm_chat_members WHERE tenant_id = $1) AS crm_chat_members,
             (SELECT count(*) FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
               WHERE c.tenant_id = $1) AS crm_chat_messages,
             (SELECT count(*) FROM crm_chat_message_attachments a
               JOIN crm_chat_messages m ON m.id = a.message_id
               JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1)
               AS crm_chat_message_attachments,
             (SELECT count(*) FROM crm_message_templates WHERE tenant_id = $1)
               AS crm_message_templates,
             (SELECT count(*) FROM core_uploads WHERE tenant_id = $1) AS core_uploads,
             (SELECT count(*) FROM ingest_message_refs WHERE channel_id = $2)
               AS ingest_message_refs,
             (SELECT count(*) FROM ingest_message_statuses WHERE channel_id = $2)
               AS ingest_message_statuses""",
        tenant.tenant_id,
        tenant.channel_id,
    )
    return dict(row)


async def message_state(pool: asyncpg.Pool, channel: TenantChannel, external_id: str) -> Any:
    """The stored message of a provider id with its settled status (None when not stored)."""
    return await pool.fetchrow(
        """SELECT m.id, m.message, m.sent_at, m.read_at, r.status_rank, r.status_at
           FROM ingest_message_refs r JOIN crm_chat_messages m ON m.id = r.message_id
           WHERE r.channel_id = $1 AND r.external_id = $2""",
        channel.channel_id,
        external_id,
    )


async def logged_statuses(pool: asyncpg.Pool, channel: TenantChannel) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        """SELECT external_id, status FROM ingest_message_statuses WHERE channel_id = $1
           ORDER BY external_id, rank""",
        channel.channel_id,
    )
    return [(r["external_id"], r["status"]) for r in rows]


async def wait_messages(
    pool: asyncpg.Pool, owner: TenantChannel | uuid.UUID, count: int
) -> dict[str, list[asyncpg.Record]]:
    """A tenant's rows once it has at least `count` messages (or as they are at the timeout)."""
    tenant_id = owner.tenant_id if isinstance(owner, TenantChannel) else owner
    return await eventually(
        lambda: tenant_rows(pool, tenant_id), lambda rows: len(rows["messages"]) >= count
    )
