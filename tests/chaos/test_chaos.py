"""Chaos: real `crm-ingest` processes on real services, broken on purpose.

(a) the consumer process is SIGKILLed five times at random moments while it works through
    100,000 events, and restarted each time;
(b) PostgreSQL is stopped for 10 s under load and started again; the consumer is not restarted;
(c) the broker goes away under a running gateway: 503 within 5 s and never 200, then 200 again
    once it is back, without restarting the gateway.

Each test prints its figures (events sent, stored, lost, duplicated) and demands 0 lost and 0
duplicated. Randomness comes from `random.Random(SEED)`, so a failure replays the same way.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from ingest.config import Settings
from ingest.embedded import EmbeddedKafka, EmbeddedPostgres, ResolvedServices, free_port
from ingest.events import (
    MessageEvent,
    Sender,
    conversation_key,
    make_event_id,
    utc_from_unix,
)
from ingest.topics import ensure_topics
from sql.db import connect, create_pool
from tests.integration.pipeline import (
    TenantChannel,
    event_record,
    isolated_pipeline,
    new_channel,
    read_topic,
)
from tests.integration.signing import telegram_headers
from tests.support import Processes, cli_env, eventually

pytestmark = pytest.mark.chaos

SEED = 20_250_606
BASE_USER_ID = 8_000_000_000
BASE_DATE = 1_750_000_000
UPDATE = (
    Path(__file__).parent.parent / "payloads" / "telegram" / "text_official.json"
).read_bytes()


# --- load -----------------------------------------------------------------------------------


def message_event(channel: TenantChannel, index: int, senders: int) -> MessageEvent:
    """A Telegram-shaped private-chat message: sender `index % senders`, text unique per index."""
    user = BASE_USER_ID + index % senders
    sent = BASE_DATE + index
    return MessageEvent(
        event_id=make_event_id(channel.channel_id, "telegram", user, index, 0),
        tenant_id=channel.tenant_id,
        channel_id=channel.channel_id,
        transport="telegram",
        conversation_key=conversation_key(channel.tenant_id, "telegram", str(user)),
        received_at=datetime.now(UTC),
        event_type="message.received",
        external_message_id=f"{user}:{index}",
        version=sent * 1000,
        sent_at=utc_from_unix(sent),
        sender=Sender(
            contact_type="telegram", contact_value=str(user), first_name=f"Chaos {user % 997}"
        ),
        text=message_text(index),
        member_meta={"chat_id": user, "user_id": user, "chat_type": "private"},
        message_meta={"update_id": index},
    )


def message_text(index: int) -> str:
    return f"chaos message #{index}"


async def publish(
    settings: Settings, channel: TenantChannel, indexes: Sequence[int], senders: int
) -> float:
    """Produce the events straight to the inbound topic, acknowledged; returns the seconds."""
    topic = settings.inbound_topic("telegram")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-chaos-loader",
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
    )
    started = time.perf_counter()
    await producer.start()
    try:
        futures = []
        for index in indexes:
            event = message_event(channel, index, senders)
            futures.append(await producer.send(topic, **event_record(event)))
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Figures:
    sent: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int

    def assert_exact(self) -> None:
        """Every event sent is stored once, and nothing else is."""
        assert (self.lost, self.duplicated, self.unexpected, self.stored) == (0, 0, 0, self.sent)

    def report(self, name: str, **extra: object) -> None:
        fields = {
            "sent": self.sent,
            "stored": self.stored,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
            **extra,
        }
        print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in fields.items()))


async def stored_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM crm_chat_messages"))


async def figures(conn: asyncpg.Connection, channel: TenantChannel, sent: int) -> Figures:
    """Message rows against the events sent (texts are unique per event).

    duplicated: rows beyond one per provider message id (a row without its own ref counts too,
    so does a second row with the same text); lost: events whose text is not stored.
    """
    rows = await conn.fetch(
        """
        SELECT m.message, r.external_id
        FROM crm_chat_messages m
        LEFT JOIN ingest_message_refs r ON r.message_id = m.id AND r.channel_id = $1
        """,
        channel.channel_id,
    )
    expected = {message_text(i) for i in range(sent)}
    texts = {r["message"] for r in rows}
    external_ids = {r["external_id"] for r in rows if r["external_id"] is not None}
    return Figures(
        sent=sent,
        stored=len(rows),
        lost=len(expected - texts),
        duplicated=len(rows) - min(len(external_ids), len(texts)),
        unexpected=len(texts - expected),
    )


async def wait_for_rows(
    conn: asyncpg.Connection,
    target: int,
    *,
    within: float,
    alive: subprocess.Popen[bytes] | None = None,
) -> int:
    """Poll the message count until it reaches `target` (or time runs out, or `alive` dies)."""
    deadline = time.monotonic() + within
    count = await stored_count(conn)
    while count < target and time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            break
        await asyncio.sleep(0.1)
        count = await stored_count(conn)
    return count


async def chaos_pipeline(
    services: ResolvedServices, server_url: str, **overrides: Any
) -> tuple[Settings, TenantChannel]:
    """A fresh migrated database on `server_url`, private topics, one Telegram channel."""
    settings = await isolated_pipeline(services, "chaos", server_url, **overrides)
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        channel = await new_channel(pool, "telegram")
    finally:
        await pool.close()
    return settings, channel


# --- (a) SIGKILL ----------------------------------------------------------------------------

KILL_EVENTS = 100_000
KILL_SENDERS = 10_000
KILLS = 5


@pytest.mark.timeout(600)
async def test_consumer_killed_five_times_loses_and_duplicates_nothing(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    settings, channel = await chaos_pipeline(services, services.database_url, partitions=4)
    publish_s = await publish(settings, channel, range(KILL_EVENTS), KILL_SENDERS)
    env = cli_env(settings)
    rng = random.Random(SEED)
    log = tmp_path / "consume.log"
    conn = await connect(settings.database_url)
    started = time.monotonic()
    kills: list[dict[str, Any]] = []
    try:
        consumer = processes.start(env, log, "consume")
        # Random moments while the consumer is doing work: a random share of the load must be
        # stored (and at least one batch since the last restart), then a random delay more.
        shares = sorted(rng.uniform(0.05, 0.85) for _ in range(KILLS))
        for share in shares:
            floor = await stored_count(conn)
            target = max(int(share * KILL_EVENTS), floor + 1)
            reached = await wait_for_rows(conn, target, within=120, alive=consumer.proc)
            assert consumer.proc.poll() is None, consumer.tail()
            assert reached >= target, f"no progress after restart: {reached}/{target}"
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            consumer.proc.send_signal(signal.SIGKILL)
            assert await consumer.wait_exit(10) == -signal.SIGKILL
            kills.append({"at_s": round(time.monotonic() - started, 1), "rows": target})
            consumer = processes.start(env, log, "consume")

        await wait_for_rows(conn, KILL_EVENTS, within=180, alive=consumer.proc)
        assert consumer.proc.poll() is None, consumer.tail()
        await asyncio.sleep(2.0)  # anything redelivered after the last row would show up now
        result = await figures(conn, channel, KILL_EVENTS)
        exit_code = await consumer.stop(30)
    finally:
        await conn.close()
    elapsed = time.monotonic() - started
    result.report(
        "chaos a: SIGKILL x5",
        kills=len(kills),
        kill_rows=[k["rows"] for k in kills],
        kill_at_s=[k["at_s"] for k in kills],
        publish_s=round(publish_s, 1),
        consume_s=round(elapsed, 1),
    )
    assert len(kills) == KILLS
    result.assert_exact()
    assert exit_code == 0, consumer.tail()


# --- (b) PostgreSQL down ----------------------------------------------------------------------

OUTAGE_S = 10.0
PG_EVENTS_BEFORE = 20_000  # published before the consumer starts
PG_EVENTS_DURING = 10_000  # published while PostgreSQL is down
PG_SENDERS = 2_000


@pytest.mark.timeout(300)
async def test_postgres_down_for_10s_consumer_recovers_by_itself(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    total = PG_EVENTS_BEFORE + PG_EVENTS_DURING
    with EmbeddedPostgres(fast=True) as pg:
        settings, channel = await chaos_pipeline(services, pg.url, partitions=4)
        await publish(settings, channel, range(PG_EVENTS_BEFORE), PG_SENDERS)
        consumer = processes.start(cli_env(settings), tmp_path / "consume.log", "consume")
        started = time.monotonic()

        conn = await connect(settings.database_url)
        try:
            target = int(PG_EVENTS_BEFORE * random.Random(SEED).uniform(0.1, 0.5))
            before = await wait_for_rows(conn, target, within=120, alive=consumer.proc)
            assert before >= target, consumer.tail()
        finally:
            await conn.close()

        pg.stop()  # fast shutdown: open transactions abort, connections drop
        stopped_at = time.monotonic()
        # Events keep flowing in while the database is away.
        await publish(settings, channel, range(PG_EVENTS_BEFORE, total), PG_SENDERS)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        assert consumer.proc.poll() is None, consumer.tail()
        pg.start()
        outage = time.monotonic() - stopped_at
        restarted_at = time.monotonic()

        conn = await connect(settings.database_url)
        try:
            first = await wait_for_rows(conn, before + 1, within=120, alive=consumer.proc)
            recovered_s = time.monotonic() - restarted_at
            assert first > before, consumer.tail()
            await wait_for_rows(conn, total, within=180, alive=consumer.proc)
            await asyncio.sleep(1.0)
            result = await figures(conn, channel, total)
        finally:
            await conn.close()
        assert consumer.proc.poll() is None, consumer.tail()  # the same process throughout
        exit_code = await consumer.stop(60)
    retries = sum(
        '"database unavailable, retrying"' in line for line in consumer.tail(10**8).splitlines()
    )
    result.report(
        "chaos b: PostgreSQL down",
        outage_s=round(outage, 1),
        rows_before_outage=before,
        first_row_after_restart_s=round(recovered_s, 1),
        db_retries_logged=retries,
        consumer_restarts=0,
        total_s=round(time.monotonic() - started, 1),
    )
    assert outage >= OUTAGE_S
    assert retries > 0, "the consumer never noticed the outage"
    result.assert_exact()
    assert exit_code == 0, consumer.tail()


# --- (c) broker unreachable -------------------------------------------------------------------

DOWN_REQUESTS = 5
ANSWER_WITHIN_S = 5.0
PUBLISH_TIMEOUT_S = 3.0


def telegram_update(index: int) -> bytes:
    update = json.loads(UPDATE)
    update["update_id"] = 500_000 + index
    update["message"]["message_id"] = 900_000 + index
    update["message"]["text"] = f"broker chaos #{index}"
    return json.dumps(update).encode()


async def topic_texts(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[str]:
    """The `text` of every event on a topic, read until idle."""
    return [json.loads(r.value)["text"] for r in await read_topic(bootstrap, topic, idle_s)]


@pytest.mark.timeout(300)
async def test_broker_unreachable_gateway_answers_503_then_recovers_without_restart(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    broker = EmbeddedKafka()
    broker.start()
    try:
        settings, channel = await chaos_pipeline(
            services,
            services.database_url,
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            producer_idempotence=broker.supports_idempotence,
        )
        port = free_port()
        # The publish timeout bounds the 503; the default (5 s) lands a hair over 5 s.
        env = cli_env(settings, CRM_INGEST_PUBLISH_TIMEOUT_S=str(PUBLISH_TIMEOUT_S))
        gateway = processes.start(env, tmp_path / "gateway.log", "gateway", "--port", str(port))
        headers = telegram_headers(channel)
        statuses: list[tuple[str, int, float]] = []  # phase, status, seconds
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def ready() -> int:
                try:
                    return (await client.get("/readyz")).status_code
                except httpx.TransportError:
                    return 0

            async def deliver(phase: str, index: int) -> int:
                started = time.monotonic()
                response = await client.post(
                    channel.path, content=telegram_update(index), headers=headers
                )
                statuses.append((phase, response.status_code, time.monotonic() - started))
                return response.status_code

            assert await eventually(ready, lambda s: s == 200, within=60) == 200, gateway.tail()
            assert await deliver("up", 0) == 200

            broker.stop()
            down_started = time.monotonic()
            for index in range(1, DOWN_REQUESTS + 1):
                await deliver("down", index)
            readyz_down = await ready()
            down_s = time.monotonic() - down_started

            broker.start()  # same port; memory-only, so the topics are created again
            await ensure_topics(settings)
            back_started = time.monotonic()
            index = DOWN_REQUESTS
            while time.monotonic() - back_started < 60:
                index += 1
                if await deliver("back", index) == 200:
                    break
                await asyncio.sleep(0.5)
            recovered_s = time.monotonic() - back_started
            assert await eventually(ready, lambda s: s == 200, within=30) == 200
        on_topic = await topic_texts(broker.bootstrap_servers, settings.inbound_topic("telegram"))
        exit_code = await gateway.stop(60)
    finally:
        broker.close()

    down = [(s, round(t, 2)) for phase, s, t in statuses if phase == "down"]
    back = [s for phase, s, _ in statuses if phase == "back"]
    accepted = [f"broker chaos #{i}" for i, (_, s, _) in enumerate(statuses) if s == 200]
    print(
        f"\n[chaos c: broker down] down_requests={len(down)} down_answers={down} "
        f"max_answer_s={max(t for _, t in down):.2f} readyz_down={readyz_down} "
        f"down_window_s={down_s:.1f} back_attempts={back} recovered_s={recovered_s:.1f} "
        f"accepted_after_restart={back.count(200)} on_topic_after_restart={sorted(on_topic)} "
        "gateway_restarts=0"
    )
    assert all(status == 503 for status, _ in down), down
    assert all(seconds < ANSWER_WITHIN_S for _, seconds in down), down
    assert readyz_down == 503
    assert back[-1] == 200, back
    assert set(back[:-1]) <= {503}, back
    # Accepted means on the topic: the event answered 200 after the restart is there.
    assert accepted[-1] in on_topic
    assert exit_code == 0, gateway.tail()
