"""Security on real services: tenant isolation, forged and replayed requests, secrets in logs,
SQL built only from parameters, request size limits.

The in-process gateway (`gateway` fixture) publishes to the real broker and the session consumer
writes to the real PostgreSQL; the log test also runs `crm-ingest gateway` and `crm-ingest
channel add` as real processes, so what uvicorn and the CLI print is covered too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
import structlog

import sql
from ingest import admin
from ingest.admin import insert_channel
from ingest.channels import ChannelDirectory
from ingest.config import TRANSPORTS, Settings, Transport
from ingest.embedded import ResolvedServices, free_port
from ingest.events import MessageEvent, StatusEvent
from ingest.gateway import create_app
from ingest.logs import configure_logging
from ingest.transports import load_adapters
from tests.integration.pipeline import Gateway, TenantChannel, migrated_database, new_channel
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("consumer")]

PAYLOADS = Path(__file__).parent.parent / "payloads"
BASE_URL = "https://gateway.test"  # what the in-process gateway sees (Twilio signs the URL)
_SCRIPT = Path(sys.executable).parent / "crm-ingest"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ingest.cli"]
TELEGRAM_SECRET = "X-Telegram-Bot-Api-Secret-Token"
WA_SIGNATURE = "X-Hub-Signature-256"
TWILIO_SIGNATURE = "X-Twilio-Signature"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# --- requests, signed the way each provider signs ----------------------------------------------


def payload(transport: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / transport / name).read_text(encoding="utf-8"))
    return data


def body(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def wa_signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's scheme, written out here: HMAC-SHA1 over the URL and the sorted name+value."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def mailgun_fields(key: str, timestamp: int, token: str) -> dict[str, str]:
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": str(timestamp), "token": token, "signature": signature}


def telegram_update(*, user: int, message_id: int, text: str, **sender: Any) -> dict[str, Any]:
    update = payload("telegram", "text_official.json")
    update["update_id"] = message_id
    message = update["message"]
    message["message_id"] = message_id
    message["text"] = text
    for who in (message["from"], message["chat"]):
        who["id"] = user
        who.update(sender)
    return update


def wa_text(*, wamid: str, phone: str, text: str, name: str = "Sheena Nelson") -> dict[str, Any]:
    envelope = payload("whatsapp", "text_official.json")
    value = envelope["entry"][0]["changes"][0]["value"]
    value["contacts"] = [{"profile": {"name": name}, "wa_id": phone}]
    value["messages"][0].update({"from": phone, "id": wamid, "text": {"body": text}})
    return envelope


async def post_telegram(
    client: httpx.AsyncClient, channel: TenantChannel, update: dict[str, Any], secret: str
) -> httpx.Response:
    return await client.post(
        channel.path,
        content=body(update),
        headers={"content-type": JSON, TELEGRAM_SECRET: secret},
    )


async def post_whatsapp(
    client: httpx.AsyncClient, channel: TenantChannel, raw: bytes, signature: str
) -> httpx.Response:
    return await client.post(
        channel.path, content=raw, headers={"content-type": JSON, WA_SIGNATURE: signature}
    )


async def post_twilio(
    client: httpx.AsyncClient, channel: TenantChannel, params: list[tuple[str, str]], sig: str
) -> httpx.Response:
    return await client.post(
        channel.path,
        content=urlencode(params).encode(),
        headers={"content-type": FORM, TWILIO_SIGNATURE: sig},
    )


def sms_params(sid: str, phone: str, text: str) -> list[tuple[str, str]]:
    return [
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("From", phone),
        ("To", "+18446151430"),
        ("Body", text),
        ("NumMedia", "0"),
        ("SmsStatus", "received"),
    ]


def published_by(gateway: Gateway, channel: TenantChannel) -> list[MessageEvent | StatusEvent]:
    return [e for e in gateway.publisher.published if e.channel_id == channel.channel_id]


async def new_tenant(pool: asyncpg.Pool, name: str = "security test tenant") -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await pool.execute(sql.QUERIES["insert_tenant"], tenant_id, name)
    return tenant_id


async def channel_of(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, transport: Transport, name: str = "", **config: str
) -> TenantChannel:
    """A channel of an existing tenant, made the way `crm-ingest channel add` makes it."""
    async with pool.acquire() as conn:
        view = await insert_channel(conn, tenant_id, transport, config, name=name)
    return TenantChannel(tenant_id, uuid.UUID(view["id"]), view["config"], view["webhook_path"])


# --- rows --------------------------------------------------------------------------------------

# Every row that belongs to a tenant, table by table ($1 = tenant id).
TENANT_ROWS = {
    "tenants": "SELECT t.* FROM tenants t WHERE t.id = $1",
    "ingest_channels": "SELECT c.* FROM ingest_channels c WHERE c.tenant_id = $1",
    "crm_clients": "SELECT c.* FROM crm_clients c WHERE c.tenant_id = $1",
    "crm_client_contacts": """SELECT cc.* FROM crm_client_contacts cc
        JOIN crm_clients c ON c.id = cc.client_id WHERE c.tenant_id = $1""",
    "ingest_identities": "SELECT i.* FROM ingest_identities i WHERE i.tenant_id = $1",
    "crm_chats": "SELECT c.* FROM crm_chats c WHERE c.tenant_id = $1",
    "crm_chat_members": "SELECT m.* FROM crm_chat_members m WHERE m.tenant_id = $1",
    "crm_chat_messages": """SELECT m.* FROM crm_chat_messages m
        JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1""",
    "crm_chat_message_attachments": """SELECT a.* FROM crm_chat_message_attachments a
        JOIN crm_chat_messages m ON m.id = a.message_id
        JOIN crm_chats c ON c.id = m.chat_id WHERE c.tenant_id = $1""",
    "core_uploads": "SELECT u.* FROM core_uploads u WHERE u.tenant_id = $1",
    "ingest_message_refs": """SELECT r.* FROM ingest_message_refs r
        JOIN ingest_channels c ON c.id = r.channel_id WHERE c.tenant_id = $1""",
    "ingest_message_statuses": """SELECT s.* FROM ingest_message_statuses s
        JOIN ingest_channels c ON c.id = s.channel_id WHERE c.tenant_id = $1""",
}

# Rows linking two tenants, anywhere in the database: each query must count 0.
CROSS_TENANT_LINKS = {
    "chat of another tenant's client": """SELECT count(*) FROM crm_chats ch
        JOIN crm_clients c ON c.id = ch.client_id WHERE c.tenant_id <> ch.tenant_id""",
    "member of another tenant's chat": """SELECT count(*) FROM crm_chat_members m
        JOIN crm_chats ch ON ch.id = m.chat_id WHERE ch.tenant_id <> m.tenant_id""",
    "member for another tenant's client": """SELECT count(*) FROM crm_chat_members m
        JOIN crm_clients c ON c.id = m.client_id WHERE c.tenant_id <> m.tenant_id""",
    "member for another tenant's contact": """SELECT count(*) FROM crm_chat_members m
        JOIN crm_client_contacts cc ON cc.id = m.client_contact_id
        JOIN crm_clients c ON c.id = cc.client_id WHERE c.tenant_id <> m.tenant_id""",
    "message by another tenant's member": """SELECT count(*) FROM crm_chat_messages msg
        JOIN crm_chats ch ON ch.id = msg.chat_id
        JOIN crm_chat_members m ON m.id = msg.sender_id WHERE m.tenant_id <> ch.tenant_id""",
    "identity of another tenant's client": """SELECT count(*) FROM ingest_identities i
        JOIN crm_clients c ON c.id = i.client_id WHERE c.tenant_id <> i.tenant_id""",
    "channel's ref to another tenant's message": """SELECT count(*) FROM ingest_message_refs r
        JOIN ingest_channels chn ON chn.id = r.channel_id
        JOIN crm_chat_messages msg ON msg.id = r.message_id
        JOIN crm_chats ch ON ch.id = msg.chat_id WHERE ch.tenant_id <> chn.tenant_id""",
}


async def tenant_fingerprint(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> dict[str, Any]:
    """(row count, md5 of the rows as text) of each table, for one tenant."""
    fingerprint = {}
    for table, query in TENANT_ROWS.items():
        row = await pool.fetchrow(
            "SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
            f" AS md5 FROM ({query}) t",
            tenant_id,
        )
        fingerprint[table] = (row["n"], row["md5"])
    return fingerprint


async def messages_of(pool: asyncpg.Pool, tenant_id: uuid.UUID) -> list[str]:
    rows = await pool.fetch(
        """SELECT m.message FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
           WHERE c.tenant_id = $1 ORDER BY m.message""",
        tenant_id,
    )
    return [r["message"] for r in rows]


# --- tenant isolation --------------------------------------------------------------------------

B_USER = 1111111  # tenant B's Telegram customer; tenant A's payloads impersonate them
B_HOST_USER = 2222222  # a Telegram contact the host app created for tenant B
B_PHONE = "16505551234"  # tenant B's WhatsApp customer
B_WAMID = "wamid.tenant-b-message-0001"


async def test_a_channel_of_tenant_a_never_creates_or_changes_rows_of_tenant_b(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    client = gateway.client
    b = await new_tenant(pool, "tenant B")
    b_tg = await channel_of(pool, b, "telegram")
    b_wa = await channel_of(pool, b, "whatsapp", app_secret="tenant-b-app-secret")
    async with pool.acquire() as conn:
        # A client the host app created for B, known by Telegram id: only B may match it.
        host_client = await conn.fetchval(
            """INSERT INTO crm_clients (tenant_id, first_name, phone_number)
               VALUES ($1, 'Host-made', '+16505551234') RETURNING id""",
            b,
        )
        await conn.execute(
            """INSERT INTO crm_client_contacts (client_id, contact_type, contact_value)
               VALUES ($1, 'telegram', $2)""",
            host_client,
            str(B_HOST_USER),
        )
    secret_b = b_tg.config["secret_token"]
    b_update = telegram_update(user=B_USER, message_id=1365, text="B: original")
    assert (await post_telegram(client, b_tg, b_update, secret_b)).status_code == 200
    b_wa_raw = body(wa_text(wamid=B_WAMID, phone=B_PHONE, text="B: whatsapp original"))
    b_wa_sig = wa_signature("tenant-b-app-secret", b_wa_raw)
    assert (await post_whatsapp(client, b_wa, b_wa_raw, b_wa_sig)).status_code == 200
    b_messages = await eventually(lambda: messages_of(pool, b), lambda m: len(m) == 2, within=30)
    assert b_messages == ["B: original", "B: whatsapp original"]
    before = await tenant_fingerprint(pool, b)

    # Tenant A: its own Telegram, WhatsApp and SMS channels.
    a = await new_tenant(pool, "tenant A")
    a_tg = await channel_of(pool, a, "telegram")
    a_wa = await channel_of(pool, a, "whatsapp", app_secret="tenant-a-app-secret")
    a_sms = await channel_of(pool, a, "sms", auth_token="tenant-a-twilio-token")
    claims = {
        "tenant_id": str(b),
        "channel_id": str(b_tg.channel_id),
        "conversation_key": f"{b}:telegram:{B_USER}",
    }
    secret_a = a_tg.config["secret_token"]

    # 1. B's customer, chat and message id, B's ids in the text and as extra fields.
    forged = telegram_update(
        user=B_USER, message_id=1365, text=f"A: tenant_id={b} channel_id={b_tg.channel_id}"
    )
    forged.update(claims)
    forged["message"].update(claims)
    forged["message"]["from"].update(claims)
    assert (await post_telegram(client, a_tg, forged, secret_a)).status_code == 200
    # 2. An edit of "that" message (B's external id), and a message from B's host-made contact.
    edit = payload("telegram", "edited_message.json")
    edit["edited_message"]["text"] = "A: edited"
    edit["edited_message"].update(claims)
    assert (await post_telegram(client, a_tg, edit, secret_a)).status_code == 200
    host = telegram_update(user=B_HOST_USER, message_id=7, text="A: from B's host contact")
    assert (await post_telegram(client, a_tg, host, secret_a)).status_code == 200
    # 3. WhatsApp: B's customer's number and B's message id; a read receipt for B's message.
    wa = wa_text(wamid=B_WAMID, phone=B_PHONE, text="A: whatsapp", name="B's customer")
    wa.update(claims)
    wa["entry"][0]["changes"][0]["value"].update(claims)
    wa_raw = body(wa)
    sig = wa_signature("tenant-a-app-secret", wa_raw)
    assert (await post_whatsapp(client, a_wa, wa_raw, sig)).status_code == 200
    receipt = payload("whatsapp", "status_read.json")
    receipt["entry"][0]["changes"][0]["value"]["statuses"][0].update(
        {"id": B_WAMID, "recipient_id": B_PHONE, **claims}
    )
    receipt_raw = body(receipt)
    sig = wa_signature("tenant-a-app-secret", receipt_raw)
    assert (await post_whatsapp(client, a_wa, receipt_raw, sig)).status_code == 200
    # 4. SMS from B's customer's number (B has a client with that phone).
    params = sms_params("SM" + "a" * 32, "+" + B_PHONE, "A: sms")
    url = BASE_URL + a_sms.path
    sig = twilio_signature("tenant-a-twilio-token", url, params)
    assert (await post_twilio(client, a_sms, params, sig)).status_code == 200
    # 5. A's valid credentials on B's webhook paths are refused.
    refused = [
        await post_telegram(client, b_tg, forged, secret_a),
        await post_whatsapp(client, b_wa, wa_raw, wa_signature("tenant-a-app-secret", wa_raw)),
    ]

    expected_a = sorted(["A: edited", "A: from B's host contact", "A: whatsapp", "A: sms"])
    a_messages = await eventually(
        lambda: messages_of(pool, a), lambda m: m == expected_a, within=30
    )
    read = await eventually(
        lambda: pool.fetchval(
            """SELECT status_rank FROM ingest_message_refs
               WHERE channel_id = $1 AND external_id = $2""",
            a_wa.channel_id,
            B_WAMID,
        ),
        lambda rank: rank == 3,
        within=30,
    )
    after = await tenant_fingerprint(pool, b)
    links = {name: await pool.fetchval(query) for name, query in CROSS_TENANT_LINKS.items()}
    a_clients = await pool.fetch(
        "SELECT id, first_name FROM crm_clients WHERE tenant_id = $1 ORDER BY id", a
    )
    events = [*published_by(gateway, a_tg), *published_by(gateway, a_wa)]
    events += published_by(gateway, a_sms)
    print(
        f"\n[security tenant isolation] tenant B rows unchanged: "
        f"{ {t: n for t, (n, _) in after.items()} } tenant A clients={len(a_clients)} "
        f"A events={len(events)} cross-tenant links={sum(links.values())}"
    )

    assert [r.status_code for r in refused] == [401, 401]
    assert a_messages == expected_a
    assert read == 3  # the receipt landed on A's message
    assert after == before
    assert links == dict.fromkeys(CROSS_TENANT_LINKS, 0)
    # B's Telegram customer, and the host-made client its WhatsApp customer matched by phone.
    assert before["crm_clients"][0] == 2
    assert before["crm_chat_messages"][0] == 2
    assert len(a_clients) >= 3  # two Telegram users, the phone (WhatsApp and SMS)
    assert {e.tenant_id for e in events} == {a}
    assert len(events) == 6


# --- forged and replayed requests --------------------------------------------------------------


async def test_forged_signatures_and_tampered_replays_are_rejected(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    client = gateway.client
    tenant = await new_tenant(pool)
    tg = await channel_of(pool, tenant, "telegram")
    wa = await channel_of(pool, tenant, "whatsapp", app_secret="forgery-app-secret")
    sms = await channel_of(pool, tenant, "sms", auth_token="forgery-twilio-token")
    email = await channel_of(pool, tenant, "email", signing_key="forgery-mailgun-key")
    other = await new_channel(pool, "telegram")
    channels = (tg, wa, sms, email)
    forged: dict[str, int] = {}

    # Telegram: no secret, a wrong one, another channel's, the right one with a different case.
    update = telegram_update(user=3_000_001, message_id=1, text="tampered telegram")
    for name, secret in {
        "telegram wrong secret": "not-the-secret",
        "telegram other channel's secret": other.config["secret_token"],
        "telegram secret in other case": tg.config["secret_token"].swapcase(),
    }.items():
        forged[name] = (await post_telegram(client, tg, update, secret)).status_code
    response = await client.post(tg.path, content=body(update), headers={"content-type": JSON})
    forged["telegram no secret"] = response.status_code

    # WhatsApp: a captured request, replayed with a changed body under its old signature.
    genuine = body(wa_text(wamid="wamid.forgery-1", phone="15550001111", text="genuine whatsapp"))
    signature = wa_signature("forgery-app-secret", genuine)
    tampered = genuine.replace(b"genuine whatsapp", b"tampered whatsapp")
    forged["whatsapp signature of another body"] = (
        await post_whatsapp(client, wa, tampered, signature)
    ).status_code
    forged["whatsapp signed with another secret"] = (
        await post_whatsapp(client, wa, tampered, wa_signature("guessed-secret", tampered))
    ).status_code
    forged["whatsapp truncated signature"] = (
        await post_whatsapp(client, wa, tampered, signature[:-2])
    ).status_code

    # Twilio: a changed parameter, an added one, the signature of another channel's URL.
    params = sms_params("SM" + "b" * 32, "+15550002222", "genuine sms")
    twilio_sig = twilio_signature("forgery-twilio-token", BASE_URL + sms.path, params)
    changed = [(k, "tampered sms" if k == "Body" else v) for k, v in params]
    forged["twilio changed param"] = (
        await post_twilio(client, sms, changed, twilio_sig)
    ).status_code
    forged["twilio added param"] = (
        await post_twilio(client, sms, [*params, ("Body", "tampered sms")], twilio_sig)
    ).status_code
    elsewhere = twilio_signature("forgery-twilio-token", BASE_URL + other.path, changed)
    forged["twilio other URL"] = (await post_twilio(client, sms, changed, elsewhere)).status_code

    # Mailgun: a tampered timestamp, a stale (replayed) post, a wrong bearer token.
    now = int(time.time())
    mail = {"from": "Eve <eve@example.com>", "subject": "hi", "body-plain": "tampered email"}
    fields = {**mail, **mailgun_fields("forgery-mailgun-key", now, "t" * 50)}
    shifted = {**fields, "timestamp": str(now + 1)}
    stale = {**mail, **mailgun_fields("forgery-mailgun-key", now - 3600, "s" * 50)}
    for name, form in {
        "mailgun tampered timestamp": shifted,
        "mailgun stale replay": stale,
    }.items():
        response = await client.post(
            email.path, content=urlencode(form).encode(), headers={"content-type": FORM}
        )
        forged[name] = response.status_code
    response = await client.post(
        email.path,
        content=b"From: eve@example.com\r\nSubject: x\r\n\r\ntampered email\r\n",
        headers={"content-type": "message/rfc822", "authorization": "Bearer not-the-token"},
    )
    forged["email wrong bearer"] = response.status_code
    assert not [e for c in channels for e in published_by(gateway, c)], "nothing was published"

    # The genuine requests pass, and a replay of one unchanged is stored once.
    genuine_ok = [
        await post_whatsapp(client, wa, genuine, signature),
        await post_whatsapp(client, wa, genuine, signature),  # the provider retried
        await post_twilio(client, sms, params, twilio_sig),
    ]
    stored = await eventually(lambda: messages_of(pool, tenant), lambda m: len(m) == 2, within=30)
    await asyncio.sleep(0.5)  # a duplicate of the replay would have landed by now
    stored = await messages_of(pool, tenant)
    print(f"\n[security forgeries] {forged} genuine={[r.status_code for r in genuine_ok]}")
    assert forged == dict.fromkeys(forged, 401), forged
    assert [r.status_code for r in genuine_ok] == [200, 200, 200]
    assert stored == ["genuine sms", "genuine whatsapp"]
    assert not any(
        "tampered" in e.text
        for c in channels
        for e in published_by(gateway, c)
        if isinstance(e, MessageEvent)
    )


# --- secrets never reach a log line ------------------------------------------------------------

TG_SECRET = "tg-secret-Zq8vXw3LmN0pR5sT7uV9yA1bC"
WA_APP_SECRET = "wa-app-secret-Hk4Jm6Np8Qr0St2Uv"
WA_VERIFY = "wa-verify-token-Ew5Fx7Gy9Hz1Ia3Jb"
TWILIO_TOKEN = "twilio-auth-token-Kc5Ld7Me9Nf1Og3Ph"
EMAIL_TOKEN = "email-bearer-token-Qi5Rj7Sk9Tl1Um3Vn"
MAILGUN_KEY = "mailgun-signing-key-Wo5Xp7Yq9Zr1As3Bt"
BOT_TOKEN = "7000000001:AAHk4Jm6Np8Qr0St2UvWx-Yz1Ab3Cd5Ef7"
WA_ACCESS_TOKEN = "EAAGwa-access-token-Gh9Ij1Kl3Mn5Op7"
SMTP_URL = "smtps://crm:smtp-password-Qr9St1Uv3@smtp.example.com:465"
GUESSES = ("guessed-secret-Cu5Dv7Ew9Fx1Gy3Hz", "guessed-token-Ia5Jb7Kc9Ld1Me3Nf")
CONFIGS: dict[Transport, dict[str, str]] = {
    "telegram": {"secret_token": TG_SECRET, "bot_token": BOT_TOKEN},
    "whatsapp": {
        "app_secret": WA_APP_SECRET,
        "verify_token": WA_VERIFY,
        "access_token": WA_ACCESS_TOKEN,
    },
    "sms": {"auth_token": TWILIO_TOKEN},
    "email": {"token": EMAIL_TOKEN, "signing_key": MAILGUN_KEY, "smtp_url": SMTP_URL},
}


async def requests_with_secrets(
    client: httpx.AsyncClient, base_url: str, channels: dict[Transport, TenantChannel], tag: str
) -> tuple[list[int], set[str]]:
    """A valid and an invalid request of every transport, each carrying credentials in headers
    or signed fields; returns the statuses and every credential sent (signatures included)."""
    sent: set[str] = {*GUESSES}
    statuses: list[int] = []
    tg, wa, sms, email = (channels[t] for t in TRANSPORTS)
    update = telegram_update(user=4_000_001, message_id=11, text=f"{tag} telegram")
    for secret in (TG_SECRET, GUESSES[0]):
        statuses.append((await post_telegram(client, tg, update, secret)).status_code)
    raw = body(wa_text(wamid=f"wamid.{tag}-1", phone="15550003333", text=f"{tag} whatsapp"))
    for signature in (wa_signature(WA_APP_SECRET, raw), wa_signature(GUESSES[0], raw)):
        sent.add(signature)
        statuses.append((await post_whatsapp(client, wa, raw, signature)).status_code)
    params = sms_params("SM" + tag.encode().hex()[:32].ljust(32, "0"), "+15550004444", "sms")
    for token in (TWILIO_TOKEN, GUESSES[0]):
        signature = twilio_signature(token, base_url + sms.path, params)
        sent.add(signature)
        statuses.append((await post_twilio(client, sms, params, signature)).status_code)
    mime = f"From: Ann <ann@example.com>\r\nSubject: {tag}\r\n\r\n{tag} email\r\n".encode()
    for token in (EMAIL_TOKEN, GUESSES[1]):
        response = await client.post(
            email.path,
            content=mime,
            headers={"content-type": "message/rfc822", "authorization": f"Bearer {token}"},
        )
        statuses.append(response.status_code)
    fields = {"from": "Bo <bo@example.com>", "subject": tag, "body-plain": f"{tag} mailgun"}
    for key in (MAILGUN_KEY, GUESSES[0]):
        form = {**fields, **mailgun_fields(key, int(time.time()), "k" * 50)}
        sent.add(form["signature"])
        response = await client.post(
            email.path, content=urlencode(form).encode(), headers={"content-type": FORM}
        )
        statuses.append(response.status_code)
    return statuses, sent


async def handshakes(client: httpx.AsyncClient, whatsapp: TenantChannel) -> list[int]:
    """Meta's subscription check, which carries the verify token in the query string."""
    statuses = []
    for token in (WA_VERIFY, GUESSES[1]):
        query = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"}
        statuses.append((await client.get(whatsapp.path, params=query)).status_code)
    return statuses


# valid, then invalid: telegram, whatsapp, sms, email bearer, mailgun
EXPECTED_STATUSES = [200, 401, 200, 401, 200, 401, 200, 401, 200, 401]
SECRETS = (
    TG_SECRET,
    WA_APP_SECRET,
    WA_VERIFY,
    TWILIO_TOKEN,
    EMAIL_TOKEN,
    MAILGUN_KEY,
    BOT_TOKEN,
    WA_ACCESS_TOKEN,
    "smtp-password-Qr9St1Uv3",
)


def leaks(text: str, credentials: set[str]) -> list[str]:
    return sorted(s for s in credentials if s in text)


def leaking_lines(text: str, credentials: set[str]) -> list[str]:
    return [line for line in text.splitlines() if any(s in line for s in credentials)]


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The service's own logging setup (structlog + ProcessorFormatter, JSON, DEBUG) writing
    into a buffer; the previous handlers and levels are restored afterwards. The test's own
    HTTP client (httpx, httpcore) is left out: its lines are not the service's."""
    root = logging.getLogger()
    names = ("aiokafka", "asyncpg", "uvicorn", "uvicorn.error", "uvicorn.access", "faststream")
    clients = ("httpx", "httpcore")
    saved_root = (root.handlers[:], root.level)
    saved_libs = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names
    }
    saved_levels = {n: logging.getLogger(n).level for n in ("aiokafka", *clients)}
    saved_structlog = structlog.get_config() if structlog.is_configured() else None
    buffer = io.StringIO()
    configure_logging("json", "DEBUG")
    structlog.configure(cache_logger_on_first_use=False)  # nothing stays bound to the buffer
    for name in clients:
        logging.getLogger(name).setLevel(logging.WARNING)
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        if saved_structlog is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved_structlog)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name, (handlers, propagate) in saved_libs.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


async def test_secrets_never_appear_in_logs_of_the_pipeline(
    gateway: Gateway, pool: asyncpg.Pool, settings: Settings, captured_logs: io.StringIO
) -> None:
    tenant = await new_tenant(pool)
    channels: dict[Transport, TenantChannel] = {}
    for transport, config in CONFIGS.items():  # what `channel add` runs, logged at DEBUG
        view = await admin.add_channel(settings.database_url, tenant, transport, config)
        channels[transport] = TenantChannel(
            tenant, uuid.UUID(view["id"]), view["config"], view["webhook_path"]
        )
    statuses, sent = await requests_with_secrets(gateway.client, BASE_URL, channels, "inproc")
    handshake = await handshakes(gateway.client, channels["whatsapp"])
    stored = await eventually(lambda: messages_of(pool, tenant), lambda m: len(m) == 5, within=30)
    await asyncio.sleep(0.5)  # the consumer's lines about the batch
    output = captured_logs.getvalue()
    checked = {*SECRETS, *sent}
    print(
        f"\n[security logs in-process] lines={output.count(chr(10))} "
        f"statuses={statuses} handshakes={handshake} stored={len(stored)} "
        f"credentials checked={len(checked)} leaked={leaks(output, checked)}"
    )
    assert statuses == EXPECTED_STATUSES
    assert handshake == [200, 403]
    assert '"webhook accepted"' in output  # the capture works: the gateway's lines are here
    assert '"batch committed"' in output  # ... and the consumer's
    assert leaks(output, checked) == [], leaking_lines(output, checked)


@dataclass
class GatewayProcess:
    client: httpx.AsyncClient
    base_url: str
    channels: dict[Transport, TenantChannel]
    cli_logs: str  # stderr of `tenant add` and every `channel add`
    proc: subprocess.Popen[bytes]
    log: Path

    async def stop(self) -> str:
        """SIGTERM, expect exit 0; the gateway's whole output."""
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(self.proc.wait, 60) == 0
        return self.log.read_text(errors="replace")


def spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
async def gateway_process(
    services: ResolvedServices, tmp_path: Path
) -> AsyncIterator[GatewayProcess]:
    """`crm-ingest channel add` for every transport, then `crm-ingest gateway`, logging JSON at
    DEBUG into a file."""
    url = await migrated_database(services.database_url, "seclogs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_INGEST_")}
    env |= {
        "DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "CRM_INGEST_TOPIC_PREFIX": f"sec{uuid.uuid4().hex[:8]}.",
        "CRM_INGEST_PRODUCER_IDEMPOTENCE": str(services.broker_supports_idempotence).lower(),
        "CRM_INGEST_LOG_FORMAT": "json",
        "CRM_INGEST_LOG_LEVEL": "DEBUG",
        "CRM_INGEST_SECRETS_KEY": os.environ["CRM_INGEST_SECRETS_KEY"],
        "CRM_INGEST_MEDIA_STORE": os.environ["CRM_INGEST_MEDIA_STORE"],
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        return result

    cli("topics")
    added = cli("tenant", "add", "--name", "logs")
    cli_logs = added.stderr
    tenant = uuid.UUID(json.loads(added.stdout)["id"])
    channels: dict[Transport, TenantChannel] = {}
    for transport, config in CONFIGS.items():
        options = [a for k, v in config.items() for a in ("--config", f"{k}={v}")]
        added = cli("channel", "add", "--tenant", str(tenant), "--transport", transport, *options)
        cli_logs += added.stderr
        view = json.loads(added.stdout)
        # Secrets the operator gave are printed masked: their last four characters only.
        assert view["config"] == {k: "…" + v[-4:] for k, v in config.items()}
        assert leaks(added.stdout, set(SECRETS)) == []
        channels[transport] = TenantChannel(
            tenant, uuid.UUID(view["id"]), config, view["webhook_path"]
        )
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = spawn(env, log, "gateway", "--port", str(port))
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:

            async def ready() -> int:
                try:
                    return (await client.get("/readyz")).status_code
                except httpx.TransportError:
                    return 0

            assert await eventually(ready, lambda s: s == 200, within=60) == 200
            yield GatewayProcess(client, base_url, channels, cli_logs, proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_secrets_never_appear_in_logs_of_the_processes(
    gateway_process: GatewayProcess,
) -> None:
    gp = gateway_process
    statuses, sent = await requests_with_secrets(gp.client, gp.base_url, gp.channels, "proc")
    gateway_logs = await gp.stop()
    checked = {*SECRETS, *sent}
    found = {"channel add": leaks(gp.cli_logs, checked), "gateway": leaks(gateway_logs, checked)}
    print(
        f"\n[security logs processes] channel-add stderr lines={gp.cli_logs.count(chr(10))} "
        f"gateway lines={gateway_logs.count(chr(10))} statuses={statuses} "
        f"credentials checked={len(checked)} leaks={found}"
    )
    assert statuses == EXPECTED_STATUSES
    assert '"webhook accepted"' in gateway_logs
    # uvicorn's access log is off (it prints query strings); the gateway's own line is there.
    assert '"uvicorn.access"' not in gateway_logs
    assert found == {"channel add": [], "gateway": []}, leaking_lines(gateway_logs, checked)


async def test_whatsapp_verify_token_in_the_query_never_appears_in_logs(
    gateway_process: GatewayProcess,
) -> None:
    gp = gateway_process
    statuses = await handshakes(gp.client, gp.channels["whatsapp"])
    gateway_logs = await gp.stop()
    tokens = {WA_VERIFY, GUESSES[1]}
    print(
        f"\n[security logs handshake] statuses={statuses} "
        f"leaking lines={leaking_lines(gateway_logs, tokens)}"
    )
    assert statuses == [200, 403]
    assert leaks(gateway_logs, tokens) == [], leaking_lines(gateway_logs, tokens)


# --- SQL is built from parameters only -----------------------------------------------------------

HOSTILE = [
    "Robert'); DROP TABLE crm_clients;--",
    "' OR 1=1 --",
    "\"; DELETE FROM crm_chat_messages WHERE '1'='1",
    "$1 $$ $body$ %s %(x)s {0} \\x27 \\' E'\\\\'",
    "Ünïcødé ✓ 🚀 שלום مرحبا 日本語 \u200b\u202e\ufeff",
]
NUL_TEXT = "nul\x00byte'); DROP TABLE tenants;--\x00"


def stored_as(text: str) -> str:
    """PostgreSQL text cannot hold NUL: the documented substitution is U+FFFD."""
    return text.replace("\x00", "\ufffd")


async def public_tables(pool: asyncpg.Pool) -> dict[str, int]:
    names = await pool.fetch(
        """SELECT table_name FROM information_schema.tables
           WHERE table_schema = 'public' ORDER BY table_name"""
    )
    return {
        r["table_name"]: await pool.fetchval(f'SELECT count(*) FROM "{r["table_name"]}"')
        for r in names
    }


async def send_hostile(
    gateway: Gateway, tg: TenantChannel, wa: TenantChannel, n: int, text: str, name: str
) -> None:
    """`text` as a Telegram and a WhatsApp message, `name` as the senders' and chat's names."""
    update = telegram_update(
        user=6_000_000 + n,
        message_id=n + 1,
        text=text,
        first_name=name,
        last_name=name[::-1],
        username=f"user{n}",
    )
    update["message"]["chat"]["title"] = name
    response = await post_telegram(gateway.client, tg, update, tg.config["secret_token"])
    assert response.status_code == 200, response.text
    raw = body(wa_text(wamid=f"wamid.sql-{n}", phone=f"1555000{n:04d}", text=text, name=name))
    response = await post_whatsapp(gateway.client, wa, raw, wa_signature("sql-app-secret", raw))
    assert response.status_code == 200, response.text


async def senders_of(pool: asyncpg.Pool, tenant: uuid.UUID) -> dict[tuple[str, str], Any]:
    """(contact type, value) -> (first name, last name, member's chat title)."""
    rows = await pool.fetch(
        """SELECT cc.contact_type, cc.contact_value, c.first_name, c.last_name,
                  m.transport_meta->>'chat_title' AS title
           FROM crm_clients c
           JOIN crm_client_contacts cc ON cc.client_id = c.id
           LEFT JOIN crm_chat_members m ON m.client_contact_id = cc.id
           WHERE c.tenant_id = $1""",
        tenant,
    )
    return {
        (r["contact_type"], r["contact_value"]): (r["first_name"], r["last_name"], r["title"])
        for r in rows
    }


async def test_sql_looking_input_is_stored_verbatim_and_tables_stay_intact(
    gateway: Gateway, pool: asyncpg.Pool, settings: Settings
) -> None:
    tables_before = await public_tables(pool)
    tenant_name = HOSTILE[0]
    tenant = uuid.UUID(
        (await admin.add_tenant(settings.database_url, uuid.uuid4(), tenant_name))["id"]
    )
    tg = await channel_of(pool, tenant, "telegram", name=HOSTILE[1])
    wa = await channel_of(pool, tenant, "whatsapp", app_secret="sql-app-secret")
    texts = [*HOSTILE, NUL_TEXT]
    for n, text in enumerate(texts):
        await send_hostile(gateway, tg, wa, n, text, HOSTILE[n % len(HOSTILE)])
    odd_paths = [
        "/webhooks/telegram/' OR 1=1 --",
        "/webhooks/telegram/00000000-0000-0000-0000-000000000000'; DROP TABLE crm_chats;--",
        "/webhooks/telegram'; DROP TABLE crm_chats;--/" + str(tg.channel_id),
    ]
    odd = [(await gateway.client.post(p, content=b"{}")).status_code for p in odd_paths]

    expected = sorted(stored_as(t) for t in texts for _ in range(2))
    messages = await eventually(
        lambda: messages_of(pool, tenant), lambda m: m == expected, within=30
    )
    senders = await senders_of(pool, tenant)
    stored_tenant = await pool.fetchval("SELECT name FROM tenants WHERE id = $1", tenant)
    stored_channel = await pool.fetchval(
        "SELECT name FROM ingest_channels WHERE id = $1", tg.channel_id
    )
    tables_after = await public_tables(pool)
    print(
        f"\n[security sql] inputs={len(texts)} messages stored={len(messages)}/{len(expected)} "
        f"senders={len(senders)} odd paths={odd} tables={len(tables_after)} "
        f"(before {len(tables_before)})"
    )
    assert messages == expected
    for n in range(len(texts)):
        name = HOSTILE[n % len(HOSTILE)]
        assert senders[("telegram", str(6_000_000 + n))] == (name, name[::-1], name)
        assert senders[("whatsapp", f"+1555000{n:04d}")][0] == name
    assert (stored_tenant, stored_channel) == (HOSTILE[0], HOSTILE[1])
    assert odd == [404, 404, 404]
    assert set(tables_after) == set(tables_before)
    assert all(tables_after[t] >= n for t, n in tables_before.items()), "no rows went missing"


async def test_nul_bytes_in_sender_names_are_stored_as_replacement_characters(
    gateway: Gateway, pool: asyncpg.Pool
) -> None:
    tenant = await new_tenant(pool)
    tg = await channel_of(pool, tenant, "telegram")
    wa = await channel_of(pool, tenant, "whatsapp", app_secret="sql-app-secret")
    await send_hostile(gateway, tg, wa, 0, "plain text", NUL_TEXT)
    expected = ["plain text", "plain text"]

    async def outcome() -> tuple[list[str], list[str]]:
        letters = await pool.fetch(
            """SELECT error_class FROM ingest_dead_letters
               WHERE position($1::bytea IN payload) > 0""",
            str(tenant).encode(),
        )
        return await messages_of(pool, tenant), [r["error_class"] for r in letters]

    messages, dead = await eventually(
        outcome, lambda o: len(o[0]) + len(o[1]) == len(expected), within=30
    )
    senders = await senders_of(pool, tenant)
    print(
        f"\n[security sql NUL names] messages stored={len(messages)}/2 dead-lettered={dead} "
        f"senders={senders}"
    )
    assert messages == expected
    name = stored_as(NUL_TEXT)
    assert senders[("telegram", "6000000")] == (name, name[::-1], name)
    assert senders[("whatsapp", "+15550000000")][0] == name


# --- request size limits -------------------------------------------------------------------------

SMALL = 2048


async def test_each_transport_answers_413_over_its_configured_limit(
    gateway: Gateway, pool: asyncpg.Pool, settings: Settings
) -> None:
    small = settings.model_copy(update={f"max_body_bytes_{t}": SMALL for t in CONFIGS})
    app = create_app(
        small,
        publisher=gateway.publisher,
        channels=ChannelDirectory(small, pool),
        adapters=load_adapters(),
    )
    tenant = await new_tenant(pool)
    channels = {t: await channel_of(pool, tenant, t, **config) for t, config in CONFIGS.items()}
    content_types = {
        "telegram": JSON,
        "whatsapp": JSON,
        "sms": FORM,
        "email": "message/rfc822",
    }
    results: dict[str, tuple[int, int, int]] = {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL
    ) as client:
        for transport, channel in channels.items():
            headers = {"content-type": content_types[transport]}

            async def chunks(size: int) -> AsyncIterator[bytes]:
                for _ in range(size // 512):
                    yield b"x" * 512

            declared = await client.post(channel.path, content=b"x" * (SMALL + 1), headers=headers)
            streamed = await client.post(channel.path, content=chunks(SMALL + 512), headers=headers)
            at_limit = await client.post(channel.path, content=b"x" * SMALL, headers=headers)
            results[transport] = (
                declared.status_code,
                streamed.status_code,
                at_limit.status_code,
            )
    print(f"\n[security size limits] limit={SMALL} (declared, streamed, at limit)={results}")
    for transport, (declared_status, streamed_status, at_limit_status) in results.items():
        assert declared_status == 413, transport
        assert streamed_status == 413, transport
        assert at_limit_status != 413, transport  # refused for its content, not its size
    assert not [e for c in channels.values() for e in published_by(gateway, c)]
