"""The reply dispatcher SIGKILLed while the provider holds its request: the command was marked
`sending` before the call, so the restarted dispatcher finds it so, marks it `unknown`
(`outcome_unknown`) and does NOT call the provider again. Real processes
(`crm-ingest outbound work`), the real broker and PostgreSQL, the Telegram fake over HTTP.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from handlers.ingestor import apply_batch
from ingest.embedded import ResolvedServices
from ingest.events import MessageEvent
from sql.db import create_pool, pooled
from tests.fakes.fixtures import as_env
from tests.fakes.harness import Scripted
from tests.fakes.telegram import TelegramFake
from tests.integration.pipeline import isolated_pipeline
from tests.integration.replies import (
    BOT_TOKEN,
    chat_of,
    command_events,
    command_row,
    finished,
    publish,
)
from tests.integration.signing import adapter_events, signed_channel, telegram_headers
from tests.support import Processes, cli_env, eventually

pytestmark = pytest.mark.chaos

UPDATE = (
    Path(__file__).parent.parent / "payloads" / "telegram" / "text_official.json"
).read_bytes()
TG_CHAT = json.loads(UPDATE)["message"]["chat"]["id"]
HELD = {
    "ok": True,
    "result": {"message_id": 1, "chat": {"id": TG_CHAT, "type": "private"}, "date": 0, "text": "x"},
}


@pytest.mark.timeout(240)
async def test_dispatcher_killed_mid_send_does_not_send_twice(
    services: ResolvedServices,
    processes: Processes,
    provider_settings: dict[str, str],
    telegram_api: TelegramFake,
    tmp_path: Path,
) -> None:
    settings = await isolated_pipeline(services, "replykill", **provider_settings)
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        telegram_api.add_bot(BOT_TOKEN)
        channel = await signed_channel(pool, "telegram", bot_token=BOT_TOKEN)
        # The client's first message, written by the inbound path's own batch function.
        events = adapter_events(channel, "telegram", telegram_headers(channel), UPDATE)
        async with pool.acquire() as conn, conn.transaction():
            await apply_batch(pooled(conn), [e for e in events if isinstance(e, MessageEvent)])
        chat_id = await chat_of(pool, channel)

        # The fake takes the request and holds its answer far longer than the test waits.
        telegram_api.server.script("sendmessage", Scripted(200, json=HELD, delay_s=120))
        env = cli_env(settings, **as_env(provider_settings))
        log = tmp_path / "outbound.log"
        dispatcher = processes.start(env, log, "outbound", "work")
        command = await publish(settings, tenant_id=channel.tenant_id, chat_id=chat_id, text="hi")

        async def in_flight() -> bool:
            row = await command_row(pool, command.command_id)
            return (
                bool(telegram_api.server.calls("sendmessage"))
                and row is not None
                and row["state"] == "sending"
            )

        assert await eventually(in_flight, bool, within=60), dispatcher.tail()
        dispatcher.proc.send_signal(signal.SIGKILL)
        assert await dispatcher.wait_exit(10) == -signal.SIGKILL

        restarted = processes.start(env, log, "outbound", "work")
        row = await finished(pool, command.command_id, within=120)
        assert restarted.proc.poll() is None, restarted.tail()
        assert (row["state"], row["error_code"], row["attempts"]) == (
            "unknown",
            "outcome_unknown",
            1,
        )
        # Not sent again: the provider saw one request, ever.
        assert len(telegram_api.server.calls("sendmessage")) == 1
        failed = await eventually(
            lambda: command_events(pool, command.command_id), lambda found: len(found) >= 2
        )
        assert [(e["event_type"], e.get("change")) for e in failed] == [
            ("message.created", None),
            ("message.updated", "failed"),
        ]
        assert failed[1]["error"]["code"] == "outcome_unknown"
        assert failed[1]["error"]["retryable"] is False
        assert await restarted.stop(30) == 0, restarted.tail()
        print(  # the figures section collects it
            f"\nreply kill: provider requests 1, state {row['state']}, "
            f"attempts {row['attempts']}, resent 0"
        )
    finally:
        await pool.close()
