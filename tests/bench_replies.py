"""What the reply dispatcher does per second: commands on the real broker, executed by
`crm-ingest outbound work`'s own code (`running_dispatcher`) against real PostgreSQL, sent to
the Telegram fake in a child process.

    python -m tests.bench_replies [--chats 20] [--per-chat 10]

Uses DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS when set, else embedded services. Prints the
commands executed per second by one dispatcher (one record at a time, as in production) and
the time per command. Figures are in README.md, Replies.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import time
import uuid

from handlers.ingestor import apply_batch
from handlers.outbound.consumer import running_dispatcher
from ingest.commands import publish_commands
from ingest.config import load_settings
from ingest.credentials import generate_key
from ingest.embedded import resolve_services
from ingest.events import MessageEvent, SendCommand
from sql.db import create_pool, pooled
from tests.bench_send import SERVER, TOKEN
from tests.bench_support import fake_in_child
from tests.integration.pipeline import isolated_pipeline
from tests.integration.signing import adapter_events, signed_channel, telegram_headers, tg_payload


async def measure(api_url: str, chats: int, per_chat: int) -> None:
    with resolve_services(load_settings()) as services:
        settings = await isolated_pipeline(services, "benchreplies", telegram_api_url=api_url)
        pool = await create_pool(settings.database_url, max_size=2)
        try:
            channel = await signed_channel(pool, "telegram", bot_token=TOKEN)
            events = []
            for n in range(chats):
                update = copy.deepcopy(tg_payload("text_official.json"))
                update["update_id"] += n
                update["message"]["from"]["id"] += n
                update["message"]["chat"]["id"] += n
                body = json.dumps(update).encode()
                events += adapter_events(channel, "telegram", telegram_headers(channel), body)
            async with pool.acquire() as conn, conn.transaction():
                await apply_batch(pooled(conn), [e for e in events if isinstance(e, MessageEvent)])
            chat_ids = [r["id"] for r in await pool.fetch("SELECT id FROM crm_chats")]
            commands = [
                SendCommand(
                    command_id=uuid.uuid4(),
                    tenant_id=channel.tenant_id,
                    chat_id=chat_id,
                    text=f"reply {k}",
                )
                for k in range(per_chat)
                for chat_id in chat_ids
            ]
            await publish_commands(settings, commands)
            async with running_dispatcher(settings):
                # Timed from the first command done, so the group's join is not counted.
                deadline = time.perf_counter() + 300
                first = done = 0
                started = time.perf_counter()
                while done < len(commands) and time.perf_counter() < deadline:
                    await asyncio.sleep(0.02)
                    done = await pool.fetchval(
                        "SELECT count(*) FROM ingest_outbound_commands WHERE state = 'accepted'"
                    )
                    if not first and done:
                        first, started = done, time.perf_counter()
                seconds = time.perf_counter() - started
            timed = done - first
            each_ms = seconds / max(timed, 1) * 1000
            print(
                f"replies: {done} of {len(commands)} commands accepted; {timed} in "
                f"{seconds:.2f} s: {timed / seconds:.0f}/s, {each_ms:.1f} ms each "
                f"({len(chat_ids)} chats, one dispatcher)"
            )
        finally:
            await pool.close()


def main(chats: int, per_chat: int) -> None:
    os.environ.setdefault("CRM_INGEST_SECRETS_KEY", generate_key())
    with fake_in_child(SERVER) as (api_url,):
        asyncio.run(measure(api_url, chats, per_chat))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--per-chat", type=int, default=10)
    args = parser.parse_args()
    main(args.chats, args.per_chat)
