"""`crm-ingest dev`: the one-command local stack.

Services come from DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when set, else embedded ones (data of
the embedded PostgreSQL kept under `settings.data_dir`; the embedded broker is memory-only).
Then: migrate, ensure topics, a demo tenant and one channel per available transport (reused on
the next run), print how to call them, run gateway and consumers until stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shlex
import sys
import uuid
from typing import Any, TypedDict

from pydantic import SecretStr

from ingest import admin
from ingest.config import Settings
from ingest.credentials import Keyring, generate_key, keyring, open_config
from ingest.logs import get_logger
from ingest.process import http_server, until_stopped
from ingest.transports import load_adapters
from ingest.transports.channel_keys import generate_token
from sql import QUERIES
from sql.db import connect

log = get_logger("crm_ingest.dev")

DEMO_TENANT_ID = uuid.UUID("00000000-0000-4000-8000-00000000de00")

# Secrets a real channel gets from its provider; the demo makes them up.
DEMO_PROVIDER_SECRETS = {"whatsapp": ("app_secret",), "sms": ("auth_token",)}


class _DumpOptions(TypedDict):
    separators: tuple[str, str]
    ensure_ascii: bool


COMPACT: _DumpOptions = {"separators": (",", ":"), "ensure_ascii": False}


def telegram_update(update_id: int, **content: Any) -> dict[str, Any]:
    """A private-chat Telegram update from the demo sender; `content` is text, photo, ..."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id - 8635,
            "date": 1441645532 + update_id - 10000,
            "chat": {"id": 1111111, "type": "private", "first_name": "Test Firstname"},
            "from": {
                "id": 1111111,
                "is_bot": False,
                "first_name": "Test Firstname",
                "last_name": "Test Lastname",
                "username": "Testusername",
            },
            **content,
        },
    }


# A photo as Telegram announces it (largest size last). The demo channel has no bot_token, so
# its fetch job fails and `crm-ingest media list` says what to run.
DEMO_PHOTO = [
    {
        "file_id": "AgACAgIAAxkBAAMEZCiCg7A1qAABECDXqbjnqtId777bAAIFyDEbLKhISVFwzRK8kZMNAQADAg"
        "ADeQADLwQ",
        "file_unique_id": "AQADBcgxGyyoSEl-",
        "file_size": 132533,
        "width": 721,
        "height": 1280,
    }
]


def telegram_request(config: dict[str, Any], update: dict[str, Any]) -> list[str]:
    return [
        "-H",
        "Content-Type: application/json",
        "-H",
        f"X-Telegram-Bot-Api-Secret-Token: {config['secret_token']}",
        "-d",
        json.dumps(update, **COMPACT),
    ]


def sample_requests(transport: str, url: str, config: dict[str, Any]) -> list[str]:
    """A correctly signed request a provider could send, as curl arguments."""
    if transport == "telegram":
        return telegram_request(config, telegram_update(10000, text="Hello from crm-ingest dev"))
    if transport == "whatsapp":
        body = json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "102290129340398",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {
                                        "display_phone_number": "15550783881",
                                        "phone_number_id": "106540352242922",
                                    },
                                    "contacts": [
                                        {
                                            "profile": {"name": "Sheena Nelson"},
                                            "wa_id": "16505551234",
                                        }
                                    ],
                                    "messages": [
                                        {
                                            "from": "16505551234",
                                            "id": "wamid.demo1",
                                            "timestamp": "1749416383",
                                            "type": "text",
                                            "text": {"body": "Hello from WhatsApp"},
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            },
            **COMPACT,
        )
        mac = hmac.new(config["app_secret"].encode(), body.encode(), hashlib.sha256).hexdigest()
        return [
            "-H",
            "Content-Type: application/json",
            "-H",
            f"X-Hub-Signature-256: sha256={mac}",
            "-d",
            body,
        ]
    if transport == "sms":
        from ingest.transports.sms import compute_signature

        form = [
            ("MessageSid", "SM50593ec6f8a4a96563d9d6817a90c42f"),
            ("From", "+16505551234"),
            ("To", "+18446151430"),
            ("Body", "Hello by SMS"),
            ("NumMedia", "0"),
        ]
        signature = compute_signature(config["auth_token"], url, form)
        encoded = [arg for name, value in form for arg in ("--data-urlencode", f"{name}={value}")]
        return ["-H", f"X-Twilio-Signature: {signature}", *encoded]
    return [
        "-H",
        "Content-Type: message/rfc822",
        "-H",
        f"Authorization: Bearer {config['token']}",
        "--data-binary",
        "@-",
    ]


# Piped into the email curl: printf turns the \n escapes into the message's line breaks.
SAMPLE_EMAIL = (
    r"From: Sheena Nelson <sheena@example.org>\nTo: support@example.com\nSubject: Hello\n"
    r"Message-ID: <demo-1@example.org>\nDate: Thu, 12 Oct 2017 18:03:30 -0700\n"
    r"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=demo\n\n"
    r"--demo\nContent-Type: text/plain; charset=utf-8\n\nHello by email, invoice attached\n"
    r"--demo\nContent-Type: text/plain; name=invoice.txt\n"
    r"Content-Disposition: attachment; filename=invoice.txt\n\nInvoice 42: 10 EUR\n--demo--\n"
)


def with_secrets_key(settings: Settings) -> Settings:
    """CRM_INGEST_SECRETS_KEY as given, else the key kept in the data dir (made on first run,
    readable by its owner only): the demo's channel secrets stay readable across runs."""
    if settings.secrets_key.get_secret_value():
        return settings
    path = settings.data_dir / "secrets.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key() + "\n")
        log.info("secrets key created", path=str(path))
    return settings.model_copy(update={"secrets_key": SecretStr(path.read_text().strip())})


async def ensure_demo_channels(database_url: str, keys: Keyring) -> list[dict[str, Any]]:
    """The demo tenant and one channel per available transport, created once and reused."""
    conn = await connect(database_url)
    try:
        await conn.execute(QUERIES["insert_tenant"], DEMO_TENANT_ID, "crm-ingest demo")
        channels = []
        for transport in load_adapters():
            name = f"demo-{transport}"
            row = await conn.fetchrow(
                QUERIES["find_channel_by_name"], DEMO_TENANT_ID, transport, name
            )
            if row:
                opened = open_config(keys, transport, row["id"], row["config"])
                channels.append(admin.channel_view(row, opened.config))
                continue
            given = {key: generate_token() for key in DEMO_PROVIDER_SECRETS.get(transport, ())}
            channels.append(
                await admin.insert_channel(
                    conn, DEMO_TENANT_ID, transport, given, name=name, keyring=keys
                )
            )
        return channels
    finally:
        await conn.close()


def with_media_store(settings: Settings) -> Settings:
    """Unset CRM_INGEST_MEDIA_STORE: attachment bytes go to `<data dir>/media`."""
    if settings.media_store:
        return settings
    media = (settings.data_dir.resolve() / "media").as_uri()
    return settings.model_copy(update={"media_store": media})


async def reply_example(settings: Settings) -> str:
    """`crm-ingest outbound send` for the demo chat, as the demo user, ready to paste (with the
    environment that reaches this stack's database and broker)."""
    conn = await connect(settings.database_url)
    try:
        user = await conn.fetchval(QUERIES["demo_user"], DEMO_TENANT_ID)
        chat = await conn.fetchval(QUERIES["demo_chat"], DEMO_TENANT_ID)
    finally:
        await conn.close()
    env = {
        "DATABASE_URL": settings.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CRM_INGEST_TOPIC_PREFIX": settings.topic_prefix,
        "CRM_INGEST_PRODUCER_IDEMPOTENCE": str(settings.producer_idempotence).lower(),
    }
    words = ["crm-ingest", "outbound", "send", "--chat", str(chat or "CHAT_ID")]
    words += ["--user", str(user), "--text", "Thanks, we are on it"]
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(words)
    if chat is None:
        line += "  # CHAT_ID: the chat a curl above creates (crm_chats.id)"
    return line


def describe(
    channels: list[dict[str, Any]], base_url: str, settings: Settings, reply: str | None = None
) -> str:
    lines = ["", "crm-ingest dev is running.", f"  database: {settings.database_url}"]
    lines += [f"  media store: {settings.media_store}", ""]
    for channel in channels:
        url = base_url + channel["webhook_path"]
        lines.append(f"  {channel['transport']:<9} {url}")
        for key, value in channel["config"].items():
            lines.append(f"            {key} = {value}")
        curl = ["curl", "-sS", "-X", "POST", url]
        command = shlex.join(curl + sample_requests(channel["transport"], url, channel["config"]))
        if channel["transport"] == "email":
            command = f"printf {shlex.quote(SAMPLE_EMAIL)} | {command}"
        lines += ["    try:", "    " + command, ""]
        if channel["transport"] == "telegram":
            photo = telegram_request(channel["config"], telegram_update(10001, photo=DEMO_PHOTO))
            lines += [
                "    a photo (its fetch fails without a bot_token: see crm-ingest media list):",
                "    " + shlex.join(curl + photo),
                "",
            ]
    if reply is not None:
        lines += [
            "  reply from the CRM (needs the channel's bot_token / access_token / ... set with",
            "  crm-ingest channel set; without it the reply fails naming the missing key):",
            "    " + reply,
            "",
        ]
    lines += ["  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def run_dev(settings: Settings, stop: asyncio.Event, *, host: str, port: int | None) -> None:
    from handlers.app import running_consumer
    from ingest.embedded import resolve_services
    from ingest.gateway import create_gateway
    from ingest.topics import ensure_topics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with resolve_services(settings, data_dir=settings.data_dir) as services:
        settings = with_secrets_key(with_media_store(services.apply(settings)))
        keys = keyring(settings)
        await admin.migrate(settings.database_url, keys)
        await ensure_topics(settings)
        channels = await ensure_demo_channels(settings.database_url, keys)
        http_port = settings.http_port if port is None else port
        server = http_server(create_gateway(settings), host, http_port, settings)
        async with running_consumer(settings):
            serving = asyncio.ensure_future(server.serve())
            # uvicorn exposes a flag, not an event: print the URLs only once it listens.
            while not server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            reply = await reply_example(settings)
            sys.stdout.write(describe(channels, f"http://{host}:{http_port}", settings, reply))
            sys.stdout.flush()
            await until_stopped(stop, serving, on_stop=lambda: setattr(server, "should_exit", True))
        log.info("dev stack stopped")
