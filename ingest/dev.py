"""`crm-ingest dev`: the one-command local stack.

Services come from DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when set, else embedded ones (data of
the embedded PostgreSQL kept under `settings.data_dir`; the embedded broker is memory-only).
Then: migrate, ensure topics, a demo tenant and one channel per available transport (reused on
the next run), print how to call them, run gateway and consumers until stopped.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import uuid
from typing import Any

from ingest import admin
from ingest.config import Settings
from ingest.logs import get_logger
from ingest.transports import load_adapters
from sql import QUERIES
from sql.db import connect

log = get_logger("crm_ingest.dev")

DEMO_TENANT_ID = uuid.UUID("00000000-0000-4000-8000-00000000de00")

SAMPLE_TELEGRAM_UPDATE = {
    "update_id": 10000,
    "message": {
        "message_id": 1365,
        "date": 1441645532,
        "chat": {
            "id": 1111111,
            "type": "private",
            "first_name": "Test Firstname",
            "last_name": "Test Lastname",
            "username": "Testusername",
        },
        "from": {
            "id": 1111111,
            "is_bot": False,
            "first_name": "Test Firstname",
            "last_name": "Test Lastname",
            "username": "Testusername",
        },
        "text": "Hello from crm-ingest dev",
    },
}


async def ensure_demo_channels(database_url: str) -> list[dict[str, Any]]:
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
            channels.append(
                admin.channel_view(row)
                if row
                else await admin.insert_channel(conn, DEMO_TENANT_ID, transport, {}, name=name)
            )
        return channels
    finally:
        await conn.close()


def describe(channels: list[dict[str, Any]], base_url: str, database_url: str) -> str:
    lines = ["", "crm-ingest dev is running.", f"  database: {database_url}", ""]
    for channel in channels:
        url = base_url + channel["webhook_path"]
        lines.append(f"  {channel['transport']:<9} {url}")
        for key, value in channel["config"].items():
            lines.append(f"            {key} = {value}")
        if channel["transport"] == "telegram":
            curl = [
                "curl",
                "-sS",
                "-X",
                "POST",
                url,
                "-H",
                "Content-Type: application/json",
                "-H",
                f"X-Telegram-Bot-Api-Secret-Token: {channel['config']['secret_token']}",
                "-d",
                json.dumps(SAMPLE_TELEGRAM_UPDATE, separators=(",", ":")),
            ]
            lines += ["", "  Try it:", "    " + shlex.join(curl)]
    lines += ["", "  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


async def run_dev(settings: Settings, stop: asyncio.Event, *, host: str, port: int | None) -> None:
    from handlers.app import running_consumer
    from ingest.cli import _server, _until_stopped
    from ingest.embedded import resolve_services
    from ingest.gateway import create_gateway
    from ingest.topics import ensure_topics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with resolve_services(settings, data_dir=settings.data_dir) as services:
        settings = settings.model_copy(
            update={
                "database_url": services.database_url,
                "kafka_bootstrap_servers": services.bootstrap_servers,
                "producer_idempotence": settings.producer_idempotence
                and services.broker_supports_idempotence,
            }
        )
        await admin.migrate(settings.database_url)
        await ensure_topics(settings)
        channels = await ensure_demo_channels(settings.database_url)
        http_port = port or settings.http_port
        server = _server(create_gateway(settings), host, http_port)
        async with running_consumer(settings):
            serving = asyncio.ensure_future(server.serve())
            # uvicorn exposes a flag, not an event: print the URLs only once it listens.
            while not server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            sys.stdout.write(
                describe(channels, f"http://{host}:{http_port}", settings.database_url)
            )
            sys.stdout.flush()
            await _until_stopped(
                stop, serving, on_stop=lambda: setattr(server, "should_exit", True)
            )
        log.info("dev stack stopped")
