"""Graceful shutdown of the real `crm-ingest` processes (SIGTERM).

Gateway: stops accepting at once, finishes the requests in flight (200), exits 0; a request that
never completes is cut off after CRM_INGEST_SHUTDOWN_TIMEOUT_S.
Consumer: finishes (or abandons, uncommitted) the batch in hand, commits what is done, leaves the
group and exits 0 within CRM_INGEST_SHUTDOWN_TIMEOUT_S; the next consumer of the group finishes
the rest with nothing lost and nothing duplicated.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ingest.config import Settings
from ingest.embedded import EmbeddedPostgres, ResolvedServices, free_port
from sql.db import connect
from tests.chaos.test_chaos import (
    chaos_pipeline,
    figures,
    publish,
    stored_count,
    telegram_update,
    topic_texts,
    wait_for_rows,
)
from tests.integration.signing import telegram_headers
from tests.support import Processes, Service, cli_env, eventually

pytestmark = pytest.mark.acceptance

SHUTDOWN_TIMEOUT_S = 10.0
EXIT_MARGIN_S = 5.0  # closing the pool and the process itself, on a slow machine


# --- gateway ------------------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """A ready `crm-ingest gateway` on its own pipeline, with one Telegram channel."""

    service: Service
    port: int
    settings: Settings
    headers: dict[str, str]  # the channel's valid request headers
    path: str  # the channel's webhook path

    def slow_request(self, body: bytes) -> SlowRequest:
        return SlowRequest(self.port, self.path, self.headers, body)


async def start_gateway(
    services: ResolvedServices, processes: Processes, tmp_path: Path, shutdown_timeout_s: float
) -> GatewayProcess:
    settings, channel = await chaos_pipeline(services, services.database_url, partitions=2)
    port = free_port()
    env = cli_env(settings, CRM_INGEST_SHUTDOWN_TIMEOUT_S=str(shutdown_timeout_s))
    gateway = processes.start(env, tmp_path / "gateway.log", "gateway", "--port", str(port))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not await http_ok(port, "/readyz"):
        assert gateway.proc.poll() is None, gateway.tail()
        await asyncio.sleep(0.2)
    assert await http_ok(port, "/readyz"), f"gateway not ready within 60 s:\n{gateway.tail()}"
    return GatewayProcess(gateway, port, settings, telegram_headers(channel), channel.path)


async def http_ok(port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status = await reader.readline()
    writer.close()
    return status.startswith(b"HTTP/1.1 200")


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


class SlowRequest:
    """A POST whose body is sent in two halves: in flight between them."""

    def __init__(self, port: int, path: str, headers: dict[str, str], body: bytes) -> None:
        self.port, self.path, self.headers, self.body = port, path, headers, body
        self.half = len(body) // 2

    async def begin(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head += f"Content-Length: {len(self.body)}\r\n\r\n"
        self.writer.write(head.encode() + self.body[: self.half])
        await self.writer.drain()

    async def finish(self) -> int:
        self.writer.write(self.body[self.half :])
        await self.writer.drain()
        return await self.status()

    async def status(self) -> int:
        line = await asyncio.wait_for(self.reader.readline(), 30)
        self.writer.close()
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


IN_FLIGHT = 5


async def test_gateway_sigterm_finishes_in_flight_requests_refuses_new_ones_exits_0(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    gateway = await start_gateway(services, processes, tmp_path, SHUTDOWN_TIMEOUT_S)
    requests = [gateway.slow_request(telegram_update(i)) for i in range(1, IN_FLIGHT + 1)]
    for request in requests:
        await request.begin()
    await asyncio.sleep(0.5)  # the gateway has every request's headers: they are in flight

    signalled = gateway.service.sigterm()
    await eventually(lambda: refused(gateway.port), bool, within=5, interval=0.05)
    refused_after = time.monotonic() - signalled
    new_connection_refused = await refused(gateway.port)
    still_running = gateway.service.proc.poll() is None

    statuses = [await request.finish() for request in requests]
    exit_code = await gateway.service.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
    exited_after = time.monotonic() - signalled
    settings = gateway.settings
    on_topic = await topic_texts(
        settings.kafka_bootstrap_servers, settings.inbound_topic("telegram")
    )
    print(
        f"\n[shutdown gateway] in_flight={IN_FLIGHT} statuses={statuses} "
        f"refused_new_after_s={refused_after:.2f} exited_after_s={exited_after:.2f} "
        f"exit_code={exit_code} published={len(on_topic)}"
    )
    assert new_connection_refused, "a new connection was accepted after SIGTERM"
    assert still_running, "the gateway did not wait for its requests in flight"
    assert statuses == [200] * IN_FLIGHT
    assert exit_code == 0, gateway.service.tail()
    assert sorted(on_topic) == sorted(f"broker chaos #{i}" for i in range(1, IN_FLIGHT + 1))
    assert '"gateway stopped"' in gateway.service.tail(10**6)


STALLED_TIMEOUT_S = 2


async def test_gateway_sigterm_cuts_a_stalled_request_after_the_shutdown_timeout(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    gateway = await start_gateway(services, processes, tmp_path, STALLED_TIMEOUT_S)
    stalled = gateway.slow_request(telegram_update(1))
    await stalled.begin()  # and never sends the rest
    await asyncio.sleep(0.5)
    signalled = gateway.service.sigterm()
    exit_code = await gateway.service.wait_exit(STALLED_TIMEOUT_S + EXIT_MARGIN_S + 10)
    exited_after = time.monotonic() - signalled
    stalled.writer.close()
    print(
        f"\n[shutdown gateway stalled] timeout_s={STALLED_TIMEOUT_S} "
        f"exited_after_s={exited_after:.2f} exit_code={exit_code}"
    )
    assert exit_code == 0, gateway.service.tail()
    assert STALLED_TIMEOUT_S - 0.5 <= exited_after <= STALLED_TIMEOUT_S + EXIT_MARGIN_S


# --- consumer -----------------------------------------------------------------------------------

EVENTS = 40_000
SENDERS = 4_000
STEP = 8_000  # rows each interrupted consumer stores before its SIGTERM
REJOIN_WITHIN_S = 12.0  # spawn -> first stored row, when the previous member left the group


async def group_members(settings: Settings) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([settings.consumer_group])
    finally:
        await admin.close()
    # DescribeGroups v2: (error, group, state, protocol type, protocol, members); member[0] = id
    return [member[0] for member in described[0].groups[0][5]]


def redelivered(log: str) -> int:
    """Events the consumers found already stored (a batch processed twice), from their logs."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return sum(
        line.get("already_present", 0) for line in lines if line["event"] == "batch committed"
    )


@dataclass
class Run:
    """One consumer's turn: spawn -> first stored row -> SIGTERM -> exit."""

    first_row_s: float
    exit_code: int | None = None
    exit_s: float = 0.0
    rows_at_exit: int = 0
    members_after: int = 0  # members of the group right after it exited
    redelivered: int = 0
    stopped_line: bool = False


async def test_consumer_sigterm_mid_load_exits_0_and_the_next_consumer_finishes_the_rest(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    settings, channel = await chaos_pipeline(services, services.database_url, partitions=4)
    await publish(settings, channel, range(EVENTS), SENDERS)
    env = cli_env(settings, CRM_INGEST_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S))
    conn = await connect(settings.database_url)
    runs: list[Run] = []
    try:
        # Three consumers in turn: the first two get SIGTERM mid-load, the third finishes.
        for number in (1, 2, 3):
            consumer = processes.start(env, tmp_path / f"consume-{number}.log", "consume")
            spawned = time.monotonic()
            floor = await stored_count(conn)
            first = await wait_for_rows(conn, floor + 1, within=120, alive=consumer.proc)
            assert first > floor, consumer.tail()
            run = Run(first_row_s=round(time.monotonic() - spawned, 1))
            if number == 3:
                await wait_for_rows(conn, EVENTS, within=120, alive=consumer.proc)
                await asyncio.sleep(1.0)
            else:
                await wait_for_rows(conn, floor + STEP, within=120, alive=consumer.proc)
            signalled = consumer.sigterm()
            run.exit_code = await consumer.wait_exit(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
            run.exit_s = round(time.monotonic() - signalled, 2)
            run.rows_at_exit = await stored_count(conn)
            run.members_after = len(await group_members(settings))
            output = consumer.tail(10**8)
            run.redelivered = redelivered(output)
            run.stopped_line = '"consumer stopped"' in output
            runs.append(run)
            assert run.exit_code == 0, consumer.tail()
        result = await figures(conn, channel, EVENTS)
    finally:
        await conn.close()
    result.report("shutdown consumer SIGTERM", runs=[vars(run) for run in runs])
    for run in runs:
        assert run.exit_code == 0
        assert run.stopped_line
        assert run.exit_s < SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S
    # The second consumer joined an existing group (generation >= 1), so its SIGTERM must have
    # sent LeaveGroup: no member is left behind and the third gets the partitions at once.
    # (Tansu numbers a group's first generation 0, and aiokafka sends LeaveGroup only for
    # generation > 0, so on Tansu the first consumer's member lingers until its session times
    # out and the second waits ~18 s for the partitions. Apache Kafka starts at generation 1.)
    assert runs[1].members_after == 0
    assert runs[2].members_after == 0
    assert runs[2].first_row_s < REJOIN_WITHIN_S
    # What a stopped consumer had stored, it had committed: nothing was processed twice.
    assert sum(run.redelivered for run in runs) == 0
    result.assert_exact()


STUCK_TIMEOUT_S = 3.0
STUCK_EVENTS = 5_000


async def test_consumer_sigterm_with_its_batch_stuck_abandons_it_after_the_timeout(
    services: ResolvedServices, processes: Processes, tmp_path: Path
) -> None:
    """PostgreSQL is down, so the batch in hand retries forever: SIGTERM gives it the shutdown
    timeout, then abandons it uncommitted and exits 0; the next consumer stores it."""
    with EmbeddedPostgres(fast=True) as pg:
        settings, channel = await chaos_pipeline(services, pg.url, partitions=2)
        await publish(settings, channel, range(STUCK_EVENTS), SENDERS)
        env = cli_env(settings, CRM_INGEST_SHUTDOWN_TIMEOUT_S=str(STUCK_TIMEOUT_S))
        consumer = processes.start(env, tmp_path / "consume-1.log", "consume")
        conn = await connect(settings.database_url)
        try:
            assert await wait_for_rows(conn, 1, within=60, alive=consumer.proc) >= 1
        finally:
            await conn.close()
        pg.stop()
        retrying = await eventually(
            lambda: asyncio.sleep(0, "database unavailable, retrying" in consumer.tail(10**8)),
            bool,
            within=30,
        )
        signalled = consumer.sigterm()
        exit_code = await consumer.wait_exit(STUCK_TIMEOUT_S + EXIT_MARGIN_S + 10)
        exit_s = time.monotonic() - signalled
        pg.start()

        conn = await connect(settings.database_url)
        try:
            rows_at_exit = await stored_count(conn)
            successor = processes.start(env, tmp_path / "consume-2.log", "consume")
            await wait_for_rows(conn, STUCK_EVENTS, within=120, alive=successor.proc)
            await asyncio.sleep(1.0)
            result = await figures(conn, channel, STUCK_EVENTS)
        finally:
            await conn.close()
        successor_exit = await successor.stop(STUCK_TIMEOUT_S + EXIT_MARGIN_S)
    result.report(
        "shutdown consumer, batch stuck",
        timeout_s=STUCK_TIMEOUT_S,
        exit_s=round(exit_s, 2),
        exit_code=exit_code,
        rows_at_exit=rows_at_exit,
        redelivered_to_successor=redelivered(successor.tail(10**8)),
    )
    assert retrying, "the batch never got stuck"
    assert exit_code == 0, consumer.tail()
    assert STUCK_TIMEOUT_S - 0.5 <= exit_s <= STUCK_TIMEOUT_S + EXIT_MARGIN_S
    result.assert_exact()
    assert successor_exit == 0, successor.tail()
