"""Every line a `crm-ingest gateway` and a `crm-ingest consume` process write is one JSON object.

Both run as real processes with CRM_INGEST_LOG_FORMAT unset and their output going to a file
(not a terminal), so the default applies. A webhook goes through them, a refused one too, and
SIGTERM stops them. Their stdout and stderr (one file each) must then hold JSON lines only:
ours, FastStream's (which installs its own coloured stderr handler when imported),
uvicorn's, aiokafka's and asyncpg's.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.embedded import ResolvedServices, free_port
from sql.db import connect
from tests.acceptance.test_shutdown import http_ok
from tests.chaos.test_chaos import chaos_pipeline, telegram_update, wait_for_rows
from tests.integration.signing import telegram_headers
from tests.support import Processes, Service, cli_env

pytestmark = pytest.mark.acceptance

STOP_WITHIN_S = 20.0


def log_lines(service: Service) -> list[str]:
    return service.log.read_text(errors="replace").splitlines()


def not_json(lines: list[str]) -> list[str]:
    """Lines that are not one JSON object with an event, a level and a timestamp."""
    bad = []
    for line in lines:
        try:
            record: Any = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict) or not {"event", "level", "timestamp"} <= record.keys():
            bad.append(line)
    return bad


def loggers(lines: list[str]) -> set[str]:
    return {str(json.loads(line).get("logger")) for line in lines if not not_json([line])}


async def test_gateway_and_consumer_write_only_json_lines(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    settings, channel = await chaos_pipeline(services, services.database_url, partitions=2)
    env = cli_env(settings)
    del env["CRM_INGEST_LOG_FORMAT"]  # the default, off a terminal
    port = free_port()
    consumer = processes.start(env, tmp_path / "consume.log", "consume")
    gateway = processes.start(env, tmp_path / "gateway.log", "gateway", "--port", str(port))

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not await http_ok(port, "/readyz"):
        assert gateway.proc.poll() is None, gateway.tail()
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        accepted = await client.post(
            channel.path, content=telegram_update(1), headers=telegram_headers(channel)
        )
        refused = await client.post(
            channel.path, content=telegram_update(2), headers=telegram_headers(channel, "wrong")
        )
    conn = await connect(settings.database_url)
    try:
        stored = await wait_for_rows(conn, 1, within=60, alive=consumer.proc)
    finally:
        await conn.close()

    exits = [await service.stop(STOP_WITHIN_S) for service in (gateway, consumer)]
    gateway_lines, consumer_lines = log_lines(gateway), log_lines(consumer)
    bad = not_json(gateway_lines) + not_json(consumer_lines)
    print(
        f"\n[log lines] gateway={len(gateway_lines)} consumer={len(consumer_lines)} "
        f"not_json={len(bad)} loggers={sorted(loggers(gateway_lines + consumer_lines))}"
    )
    assert (accepted.status_code, refused.status_code) == (200, 401)
    assert stored == 1, consumer.tail()
    assert exits == [0, 0], gateway.tail() + consumer.tail()
    assert not bad, "\n".join(bad[:20])
    # The lines this test is about were written, so their absence cannot pass it: FastStream's
    # partition assignment, uvicorn's start-up, and our own per-request and per-batch lines.
    consumer_text = "\n".join(consumer_lines)
    assert "assigned to partitions" in consumer_text, consumer_text[-4000:]
    assert '"batch committed"' in consumer_text
    assert "faststream" in loggers(consumer_lines)
    assert "uvicorn.error" in loggers(gateway_lines), gateway_lines
    assert '"gateway stopped"' in "\n".join(gateway_lines)
