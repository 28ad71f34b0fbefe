"""The `crm-ingest` command line, run as real processes against real services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.embedded import ResolvedServices, free_port
from sql.db import connect
from tests.support import create_database, eventually

pytestmark = pytest.mark.acceptance

PAYLOAD = Path(__file__).parent.parent / "payloads" / "telegram" / "text_real_cyrillic.json"
_SCRIPT = Path(sys.executable).parent / "crm-ingest"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "ingest.cli"]


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def scrape(client: httpx.AsyncClient, url: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    text = (await client.get(url)).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], env=env, text=True, stderr=subprocess.PIPE)


@pytest.fixture
async def env(services: ResolvedServices) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_INGEST_")}
    return {
        **base,
        "DATABASE_URL": await create_database(services.database_url, "cli"),
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "CRM_INGEST_TOPIC_PREFIX": f"cli{uuid.uuid4().hex[:8]}.",
        "CRM_INGEST_CONSUMER_GROUP": f"cli-{uuid.uuid4().hex[:8]}",
        "CRM_INGEST_PARTITIONS": "2",
        "CRM_INGEST_PRODUCER_IDEMPOTENCE": str(services.broker_supports_idempotence).lower(),
        "CRM_INGEST_LOG_FORMAT": "json",
        "CRM_INGEST_METRICS_PORT": "0",  # a free port: tests may run beside other consumers
        "CRM_INGEST_SECRETS_KEY": os.environ["CRM_INGEST_SECRETS_KEY"],
        "CRM_INGEST_MEDIA_STORE": os.environ["CRM_INGEST_MEDIA_STORE"],
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=30)


async def test_operator_verbs_against_external_services(
    env: dict[str, str], processes: list[subprocess.Popen[str]]
) -> None:
    assert json.loads(run(env, "migrate").stdout)["applied"][:2] == ["0001", "0002"]
    assert json.loads(run(env, "migrate").stdout) == {"applied": [], "channels_encrypted": 0}
    created = json.loads(run(env, "topics").stdout)["created"]
    assert env["CRM_INGEST_TOPIC_PREFIX"] + "inbound.telegram" in created
    assert json.loads(run(env, "topics").stdout) == {"created": []}

    tenant = json.loads(run(env, "tenant", "add", "--name", "Acme").stdout)["id"]
    channel = json.loads(
        run(env, "channel", "add", "--tenant", tenant, "--transport", "telegram").stdout
    )
    assert channel["tenant_id"] == tenant
    assert channel["webhook_path"] == f"/webhooks/telegram/{channel['id']}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,256}", channel["config"]["secret_token"])

    unknown = run(
        env, "channel", "add", "--tenant", str(uuid.uuid4()), "--transport", "telegram", check=False
    )
    bad = run(
        env,
        "channel",
        "add",
        "--tenant",
        tenant,
        "--transport",
        "telegram",
        "--config",
        "secret_token=no spaces",
        check=False,
    )
    for failed in (unknown, bad):
        assert failed.returncode != 0
        assert failed.stdout == ""
        assert failed.stderr.startswith("crm-ingest: error: ")
        assert failed.stderr.count("\n") == 1

    port, metrics_port = free_port(), free_port()
    gateway = spawn(env, "gateway", "--port", str(port))
    consumer = spawn({**env, "CRM_INGEST_METRICS_PORT": str(metrics_port)}, "consume")
    processes += [gateway, consumer]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def healthy() -> int:
            try:
                return (await client.get("/readyz")).status_code
            except httpx.TransportError:
                return 0

        assert await eventually(healthy, lambda s: s == 200, within=30) == 200
        response = await client.post(
            channel["webhook_path"],
            content=PAYLOAD.read_bytes(),
            headers={
                "content-type": "application/json",
                "x-telegram-bot-api-secret-token": channel["config"]["secret_token"],
                "x-request-id": "acceptance-1",
            },
        )
        assert response.status_code == 200
        assert response.headers["x-correlation-id"] == "acceptance-1"

    assert gateway.poll() is None, "the gateway died early"
    assert consumer.poll() is None, "the consumer died early"
    conn = await connect(env["DATABASE_URL"])
    try:
        message = await eventually(
            lambda: conn.fetchval("SELECT message FROM crm_chat_messages"),
            lambda m: m is not None,
            within=60,
        )
        assert message == "just text"
    finally:
        await conn.close()

    async with httpx.AsyncClient() as client:
        served = await scrape(client, f"http://127.0.0.1:{port}/metrics")
        consumed = await eventually(
            lambda: scrape(client, f"http://127.0.0.1:{metrics_port}/metrics"),
            lambda m: m.get(("crm_ingest_consumer_events_total", (("outcome", "created"),))) == 1,
        )
    accepted = (("status", "200"), ("transport", "telegram"))
    assert served[("crm_ingest_webhook_requests_total", accepted)] == 1
    assert served[("crm_ingest_publish_seconds_count", (("transport", "telegram"),))] == 1
    assert consumed[("crm_ingest_consumer_events_total", (("outcome", "created"),))] == 1
    assert consumed[("crm_ingest_consumer_batch_size_count", ())] >= 1
    assert any(name == "faststream_received_messages_total" for name, _ in consumed)

    # Authenticated but unparseable: 200, kept on the dead-letter topic, recorded by the consumer.
    garbled = b'{"update_id": 7, "message": {"text": "kept-body-marker"'
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        kept = await client.post(
            channel["webhook_path"],
            content=garbled,
            headers={
                "content-type": "application/json",
                "x-telegram-bot-api-secret-token": channel["config"]["secret_token"],
            },
        )
        assert kept.status_code == 200
        served = await scrape(client, f"http://127.0.0.1:{port}/metrics")
    malformed = (("reason_kind", "malformed"), ("transport", "telegram"))
    assert served[("crm_ingest_webhooks_kept_total", malformed)] == 1
    conn = await connect(env["DATABASE_URL"])
    try:
        recorded = await eventually(
            lambda: conn.fetchval("SELECT count(*) FROM ingest_dead_letters"),
            lambda n: n == 1,
            within=60,
        )
        assert recorded == 1
    finally:
        await conn.close()

    assert stop(gateway) == 0
    assert stop(consumer) == 0
    consumer_log = consumer.stderr.read() if consumer.stderr else ""
    lines = [json.loads(line) for line in consumer_log.splitlines() if line.startswith("{")]
    committed = [line for line in lines if line["event"] == "batch committed"]
    assert committed
    # The webhook's correlation id travelled through the Kafka headers into the consumer's log.
    assert any("acceptance-1" in line.get("correlation_ids", []) for line in committed)
    assert all(channel["config"]["secret_token"] not in line for line in consumer_log.splitlines())
    gateway_log = gateway.stderr.read() if gateway.stderr else ""
    warned = [json.loads(line) for line in gateway_log.splitlines() if "kept unprocessed" in line]
    assert [(w["level"], w["reason_kind"], w["transport"]) for w in warned] == [
        ("warning", "malformed", "telegram")
    ]
    assert warned[0]["channel_id"] == channel["id"]
    assert "kept-body-marker" not in gateway_log  # never the body

    [letter] = json.loads(run(env, "dlq", "list").stdout)
    assert (letter["reason_kind"], letter["transport"]) == ("malformed", "telegram")
    assert letter["error_message"].startswith("malformed JSON")
    replayed = json.loads(run(env, "dlq", "replay", "--all").stdout)
    assert (replayed["selected"], replayed["replayed"], replayed["still_failing"]) == (1, 0, 1)


def test_bad_setting_fails_at_start_naming_it(env: dict[str, str]) -> None:
    result = run({**env, "CRM_INGEST_PARTITIONS": "many"}, "topics", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("crm-ingest: error: invalid setting CRM_INGEST_PARTITIONS")
    assert result.stderr.count("\n") == 1


def test_media_verbs_refuse_operator_mistakes_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    run(env, "migrate")
    for args, extra, says in (
        (("media", "work"), {"CRM_INGEST_MEDIA_STORE": ""}, "CRM_INGEST_MEDIA_STORE is not set"),
        (("media", "retry"), {}, "--id UPLOAD_ID, or requeue every failed one with --failed"),
        (("media", "list", "--limit", "0"), {}, "--limit must be at least 1"),
        (("media", "work"), {"CRM_INGEST_MEDIA_STORE": "ftp://x"}, "CRM_INGEST_MEDIA_STORE"),
    ):
        result = run({**env, **extra}, *args, check=False)
        assert result.returncode != 0, args
        assert result.stderr.startswith("crm-ingest: error: "), result.stderr
        assert says in result.stderr
        assert result.stderr.count("\n") == 1
    assert run(env, "media", "list").stdout == ""
    assert run(env, "media", "retry", "--failed").stdout == '{"requeued": 0}\n'


def test_media_work_stops_cleanly_on_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "migrate")
    run(env, "topics")
    worker = spawn(
        {**env, "CRM_INGEST_MEDIA_STORE": (tmp_path / "media").as_uri()}, "media", "work"
    )
    assert worker.stderr is not None
    deadline = time.monotonic() + 60
    lines = ""
    while "media worker running" not in lines and time.monotonic() < deadline:
        line = worker.stderr.readline()
        assert line or worker.poll() is None, lines
        lines += line
    assert "media worker running" in lines
    assert stop(worker, signal.SIGTERM) == 0


def test_dev_runs_the_pasted_curl_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("CRM_INGEST_")
    }
    env["CRM_INGEST_DATA_DIR"] = str(tmp_path / "state")
    env["CRM_INGEST_HTTP_PORT"] = str(free_port())

    def start_dev() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [*CLI, "dev"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, deadline = "", time.monotonic() + 90
        assert proc.stdout is not None
        while "Ctrl-C" not in out and time.monotonic() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert "Ctrl-C" in out, out
        return proc, out

    proc, out = start_dev()
    children = psutil.Process(proc.pid).children(recursive=True)
    curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
    answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
    assert answer.stdout == '{"ok":true}'
    database = re.search(r"database: (\S+)", out).group(1)
    assert f"media store: {(tmp_path / 'state' / 'media').as_uri()}\n" in out

    async def stored() -> str | None:
        conn = await connect(database)
        try:
            return await conn.fetchval("SELECT message FROM crm_chat_messages")
        finally:
            await conn.close()

    assert (
        asyncio.run(eventually(stored, lambda m: m is not None, within=60))
        == "Hello from crm-ingest dev"
    )
    # The photo curl: the demo channel has no bot_token, so its fetch fails, and `media list`
    # says which key is missing and the command that sets it.
    photo = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")][1]
    assert '"photo":' in photo
    answer = subprocess.run(shlex.split(photo), capture_output=True, text=True, timeout=30)
    assert answer.stdout == '{"ok":true}'
    channel_id = re.search(r"/webhooks/telegram/(\S+)", out).group(1)
    media_env = {**env, "DATABASE_URL": database}

    async def failed() -> list[dict[str, object]]:
        listed = await asyncio.to_thread(run, media_env, "media", "list", "--status", "failed")
        return [json.loads(line) for line in listed.stdout.splitlines()]

    [job] = asyncio.run(eventually(failed, lambda jobs: len(jobs) == 1, within=60))
    assert job["channel_id"] == channel_id
    assert job["error"].startswith("channel has no bot_token")
    assert f"crm-ingest channel set {channel_id} --config bot_token=" in job["error"]
    assert stop(proc, signal.SIGINT) == 0
    assert children
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    # A second run reuses the demo tenant and channel (and the kept database).
    again, out_again = start_dev()
    assert re.search(r"/webhooks/telegram/\S+", out_again).group(0) == re.search(
        r"/webhooks/telegram/\S+", out
    ).group(0)
    # Its printed reply names the demo chat now; pasted, it publishes a command that the dev
    # stack's dispatcher fails, naming the channel key it lacks and how to set it.
    reply = next(
        line.strip() for line in out_again.splitlines() if " crm-ingest outbound send " in line
    )
    path = f"{Path(CLI[0]).parent}:{env.get('PATH', '')}"
    sent = subprocess.run(
        reply, shell=True, env={**env, "PATH": path}, capture_output=True, text=True, timeout=60
    )
    assert sent.returncode == 0, sent.stderr
    command_id = json.loads(sent.stdout)["command_id"]
    database_again = re.search(r"database: (\S+)", out_again).group(1)  # a new port each run

    async def failed() -> Any:
        conn = await connect(database_again)
        try:
            return await conn.fetchrow(
                "SELECT state, error_message FROM ingest_outbound_commands WHERE command_id = $1",
                uuid.UUID(command_id),
            )
        finally:
            await conn.close()

    row = asyncio.run(eventually(failed, lambda r: r is not None and r["state"] == "failed"))
    assert row is not None
    assert row["state"] == "failed"
    assert "--config bot_token=" in row["error_message"]
    assert "crm-ingest channel set " in row["error_message"]
    assert stop(again, signal.SIGINT) == 0
