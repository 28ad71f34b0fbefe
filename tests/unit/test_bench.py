"""The bench's workload generator and report formatting (no services; fast)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os

import pytest

from ingest.bench import add_arguments
from ingest.bench.children import settings_env
from ingest.bench.growth import GrowthSpec, growth_ratio, sizes
from ingest.bench.http_client import RawHttp
from ingest.bench.measure import BenchError, percentile
from ingest.bench.report import cpu_budget, format_table, summarize
from ingest.bench.workload import (
    ATTACHMENT_SHARE,
    DUPLICATE_SHARE,
    NEW_SENDER_SHARE,
    gateway_bodies,
    generate,
    telegram_request,
)
from ingest.config import load_settings
from ingest.events import MessageEvent, conversation_key, decode_event
from ingest.transports.base import ParseContext
from ingest.transports.telegram import TelegramAdapter

EVENTS = 2000


@pytest.fixture(scope="module")
def workload():
    return generate(EVENTS, 3, seed=7)


def test_mix_proportions_are_exact(workload) -> None:
    duplicates = round(EVENTS * DUPLICATE_SHARE)
    distinct = EVENTS - duplicates
    assert len(workload.deliveries) == EVENTS
    assert workload.duplicates == duplicates == EVENTS - len({d.event for d in workload.deliveries})
    assert len(workload.events) == distinct
    assert workload.new_senders == round(distinct * NEW_SENDER_SHARE)
    assert len({e.sender.contact_value for e in workload.events}) == workload.new_senders
    with_attachments = [e for e in workload.events if e.attachments]
    assert len(with_attachments) == round(distinct * ATTACHMENT_SHARE)
    assert workload.with_attachments == len(with_attachments)
    # Every tenant gets senders, and each sender stays with one tenant.
    tenants = collections.defaultdict(set)
    for e in workload.events:
        tenants[e.sender.contact_value].add(e.tenant_id)
    assert all(len(t) == 1 for t in tenants.values())
    assert {e.tenant_id for e in workload.events} == {c.tenant_id for c in workload.channels}


def test_known_senders_are_known_before_they_speak_again(workload) -> None:
    seen: set[str] = set()
    firsts = 0
    for event in workload.events:
        if event.sender.contact_value not in seen:
            firsts += 1
            seen.add(event.sender.contact_value)
            assert event.external_message_id.endswith(":1")
    assert firsts == workload.new_senders


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = generate(300, 2, seed=1), generate(300, 2, seed=1), generate(300, 2, seed=2)
    assert [(d.key, d.value, d.headers) for d in a.deliveries] == [
        (d.key, d.value, d.headers) for d in b.deliveries
    ]
    assert [d.value for d in a.deliveries] != [d.value for d in c.deliveries]


def test_duplicates_are_the_same_delivery_later_in_the_topic(workload) -> None:
    positions = collections.defaultdict(list)
    for position, delivery in enumerate(workload.deliveries):
        positions[delivery.event].append(position)
    twice = {event: at for event, at in positions.items() if len(at) > 1}
    assert len(twice) == workload.duplicates
    assert all(len(at) == 2 for at in twice.values())
    for at in twice.values():
        first, again = (workload.deliveries[p] for p in at)
        assert (again.key, again.value, again.headers) == (first.key, first.value, first.headers)
        assert decode_event(again.value).event_id == decode_event(first.value).event_id
        assert dict(again.headers)["event-id"] == dict(first.headers)["event-id"]


def test_events_are_shaped_like_the_telegram_adapters(workload) -> None:
    for delivery in workload.deliveries[:200]:
        event = decode_event(delivery.value)
        assert isinstance(event, MessageEvent)
        assert event.transport == "telegram"
        assert event.sender.contact_type == "telegram"
        assert event.member_meta["chat_id"] == event.member_meta["user_id"]
        assert event.member_meta["chat_type"] == "private"
        key = conversation_key(event.tenant_id, "telegram", event.sender.contact_value)
        assert event.conversation_key == key
        assert delivery.key == key.encode()
        assert event.event_id == workload.events[delivery.event].event_id


def test_expected_counts_of_a_prefix(workload) -> None:
    whole = workload.expected()
    assert whole.events == len(workload.events)
    assert whole.senders == workload.new_senders
    assert whole.attachments == workload.with_attachments
    assert whole.rows()["crm_chat_messages"] == whole.events
    first = workload.expected(100)
    assert first.deliveries == 100
    assert first.events == len({d.event for d in workload.deliveries[:100]})
    assert 0 < first.senders <= first.events <= 100


def test_gateway_bodies_are_new_messages_the_adapter_accepts(workload) -> None:
    first, second = gateway_bodies(workload, 50), gateway_bodies(workload, 50, start=50)
    ids = [ext for _, _, ext in first + second]
    assert len(set(ids)) == 100
    assert not set(ids) & {e.external_message_id for e in workload.events}
    adapter = TelegramAdapter()
    for channel, body, ext in first[:10]:
        ctx = ParseContext(channel=channel.as_channel(), received_at=workload.events[0].sent_at)
        (event,) = adapter.handle(telegram_request(channel, body), ctx).events
        assert event.external_message_id == ext


def _phases(
    consumer: float,
    latency_p99: float | None = 120.0,
    cpu: tuple[float, float] | None = None,  # consumers, PostgreSQL: µs per event in phase d
) -> dict:
    def phase(label: str, rate: float) -> dict:
        return {"label": label, "events": 1000, "seconds": 1000 / rate, "events_per_s": rate}

    phases = {
        "load": phase("load", 40_000),
        "kafka_ceiling": phase("a", 100_000),
        "db_ceiling": {**phase("b", 40_000), "rows_per_s": 170_000},
        "baseline": phase("c", 1000),
        "consumer": phase("d", consumer),
        "gateway_bare": phase("f bare", 4000),
        "gateway_telegram": phase("f telegram", 2400),
        "latency": None,
    }
    if latency_p99 is not None:
        phases["latency"] = {
            **phase("f latency", 1000),
            "p50_ms": 20.0,
            "p95_ms": 60.0,
            "p99_ms": latency_p99,
        }
    if cpu is not None:
        phases["consumer"]["cpu_us_per_event"] = {
            "children": cpu[0],
            "postgres": cpu[1],
            "broker": 8.0,
            "bench": 0.4,
        }
    return phases


def _report(phases: dict) -> dict:
    ratios, targets = summarize(phases)
    machine = {
        "cores": 2,
        "python": "3.11",
        "postgres": "17",
        "postgres_fsync": "off",
        "database_source": "embedded",
        "broker": "Tansu",
        "versions": {"asyncpg": "0.30"},
        "uvicorn_http": "h11",
        "event_loop": "asyncio",
    }
    met = all(t["met"] for t in targets.values() if t["met"] is not None)
    return {"phases": phases, "ratios": ratios, "targets": targets, "machine": machine} | {
        "targets_met": met
    }


def test_ratios_and_targets() -> None:
    ratios, targets = summarize(_phases(consumer=30_000, cpu=(40.0, 45.0)))
    assert ratios["d_over_b"] == 0.75
    assert ratios["d_over_c"] == 30.0
    assert ratios["d_over_min_a_b"] == 0.75  # min(a, b) is the DB ceiling here
    assert ratios["gateway_over_bare"] == 0.6
    assert all(t["met"] for t in targets.values())  # the goals are bounds: 40 and 45 meet them

    ratios, targets = summarize(_phases(consumer=10_000, latency_p99=400.0, cpu=(40.1, 45.1)))
    assert ratios["d_over_b"] == 0.25
    assert not targets["consumer_cpu_us"]["met"]
    assert not targets["postgres_cpu_us"]["met"]
    assert not targets["d_over_b"]["met"]
    assert not targets["d_over_c"]["met"]
    assert not targets["latency_p99_ms"]["met"]
    assert targets["gateway_over_bare"]["met"]


def test_missing_phases_give_no_ratio_and_no_verdict() -> None:
    phases = _phases(consumer=30_000, latency_p99=None)
    phases["gateway_bare"] = phases["gateway_telegram"] = None
    ratios, targets = summarize(phases)
    assert ratios["gateway_over_bare"] is None
    assert targets["gateway_over_bare"]["met"] is None
    assert targets["consumer_cpu_us"]["met"] is None  # phase d measured no CPU
    assert targets["postgres_cpu_us"]["met"] is None
    assert targets["latency_p99_ms"]["met"] is None
    table = format_table(_report(phases))
    assert "f bare" not in table
    assert "targets met: yes" in table


def test_table_shows_every_phase_ratio_and_verdict() -> None:
    table = format_table(_report(_phases(consumer=10_000, latency_p99=400.0)))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["phase", "events", "seconds", "events/s"]
    for label in ("load", "a ", "b ", "c ", "d ", "f bare", "f telegram", "f latency"):
        assert any(line.startswith(label) for line in lines), label
    assert "170,000 rows/s" in table
    assert "ii/i 0.60  ≥ 0.5 × bare ASGI  ✓" in table
    assert "p99 400 ms  p99 < 250 ms  ✗" in table
    d_over_b = next(line for line in lines if line.startswith("e  d / b"))
    assert "0.25" in d_over_b
    assert d_over_b.endswith("✗")
    assert "targets met: no" in table
    json.dumps(_report(_phases(consumer=10_000)))  # the report is JSON as it is


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def test_arguments_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.events, args.partitions, args.tenants) == (100_000, 4, 4)
    assert (args.gateway_requests, args.gateway_rate, args.json_only) == (5000, 1000.0, False)
    assert args.consumer_processes == (os.cpu_count() or 1)  # as deployed: one per core
    assert (args.growth_identities, args.growth_events, args.growth_tenants) == (100_000, 5000, 500)
    args = parser.parse_args(["--events", "10", "--json-only", "--gateway-client", "httpx"])
    assert (args.events, args.json_only, args.gateway_client) == (10, True, "httpx")
    with pytest.raises(SystemExit):
        parser.parse_args(["--events", "0"])


def test_children_get_exactly_the_benchs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        DATABASE_URL="postgresql://u@h/db",
        KAFKA_BOOTSTRAP_SERVERS="h:9092",
        topic_prefix="bench1.",
        producer_idempotence=False,
        batch_max_records=123,
    )
    env = settings_env(settings)
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == settings


async def test_raw_client_reconnects_when_the_server_closed_an_idle_connection() -> None:
    served = 0

    async def one_request_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # as an idle keep-alive timeout would

    server = await asyncio.start_server(one_request_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RawHttp("127.0.0.1", port)
    try:
        statuses = [await client.post("/", b"{}", {}) for _ in range(3)]
    finally:
        await client.aclose()
        server.close()
    assert statuses == [200, 200, 200]
    assert served == 3


def test_cpu_budget_holds_phase_d_cpu_by_process_kind_against_the_goal() -> None:
    phases = _phases(consumer=12_000, cpu=(74.6, 44.6))
    budget = cpu_budget(phases, cores=2)
    assert budget == {
        "us_per_event": {"children": 74.6, "postgres": 44.6, "broker": 8.0, "bench": 0.4},
        "total_us_per_event": 127.6,
        "cores": 2,
        "events_per_s_at_this_cpu": 15_674,
    }
    table = format_table(_report(phases) | {"cpu_budget": budget})
    line = next(line for line in table.splitlines() if "CPU per event" in line)
    assert line == (
        "d  CPU per event: consumers 75 (consumers ≤ 40 µs  ✗) + PostgreSQL 45"
        " (PostgreSQL ≤ 45 µs  ✓) + broker 8 + bench 0 = 128 µs; 2 cores carry 15,674 ev/s"
        " at this cost"
    )
    phases["consumer"]["cpu_us_per_event"]["postgres"] = 0.0  # DATABASE_URL: not our process
    assert summarize(phases)[1]["postgres_cpu_us"]["met"] is None
    assert cpu_budget(_phases(consumer=12_000), cores=2) is None  # no CPU figures, no line


def test_sql_path_line_shows_database_and_python_cpu_per_event() -> None:
    phases = _phases(consumer=12_000)
    phases["sql_path"] = {
        "label": "s  consumer SQL path (no Kafka)",
        "events": 1000,
        "seconds": 0.125,
        "events_per_s": 8000.0,
        "cpu_us_per_event": {"bench": 61.2, "postgres": 58.7, "broker": 0.0, "children": 0.0},
    }
    line = next(x for x in format_table(_report(phases)).splitlines() if x.startswith("s  "))
    assert line.endswith("8,000  PostgreSQL 59 · Python 61 µs CPU per event")
    phases["sql_path"]["cpu_us_per_event"]["postgres"] = 0.0  # DATABASE_URL: not our process
    line = next(x for x in format_table(_report(phases)).splitlines() if x.startswith("s  "))
    assert "PostgreSQL not seen · Python 61 µs CPU per event" in line


def _growth_size(identities: int, postgres: float, python: float) -> dict[str, object]:
    return {
        "identities": identities,
        "messages": identities + 5,
        "database_mb": identities // 1000,
        "shared_buffers_mb": 128,
        "blocks_hit_per_event": 98.4,
        "blocks_read_per_event": 3.21,
        "events": 1000,
        "seconds": 0.2,
        "cpu_us_per_event": {"bench": python, "postgres": postgres, "broker": 0.0},
    }


def test_growth_lines_show_cpu_per_event_at_each_size_and_largest_over_smallest() -> None:
    sizes = [_growth_size(10_000, 100.0, 70.0), _growth_size(100_000, 150.0, 70.0)]
    phases = _phases(consumer=12_000)
    phases["growth"] = {
        "label": "g  growth (consumer SQL path)",
        "events": 2000,
        "seconds": 0.4,
        "events_per_s": 5000.0,
        "sizes": sizes,
        "largest_over_smallest": growth_ratio(sizes),
    }
    lines = [x for x in format_table(_report(phases)).splitlines() if x.startswith("g  ")]
    assert lines[1] == (
        "g  at 10,000 identities, 10,005 messages: PostgreSQL 100 · Python 70 µs CPU per event;"
        " blocks per event 98 hit, 3.2 read (database 10 MB, shared_buffers 128 MB)"
    )
    assert lines[2].startswith("g  at 100,000 identities, 100,005 messages: PostgreSQL 150 ·")
    assert lines[3] == (
        "g  CPU per event, largest / smallest size: PostgreSQL 1.50 · Python 1.00  (flat ≈ 1.0)"
    )
    sizes[0]["cpu_us_per_event"] = {"bench": 70.0, "postgres": 0.0}  # a server not started here
    assert growth_ratio(sizes) == {"postgres": None, "bench": 1.0}


def test_growth_sizes_and_an_impossible_size_fails_before_anything_starts() -> None:
    assert sizes(1_000_000) == [100_000, 500_000, 1_000_000]
    spec = GrowthSpec(identities=100_000, events=5000, small_tenants=500, batch_records=500)
    assert spec.known_senders == 4500  # 10 % new senders
    spec.check()  # 4,500 of the 5,000 even senders at 10,000
    too_small = GrowthSpec(identities=4000, events=1000, small_tenants=5, batch_records=500)
    with pytest.raises(BenchError, match=r"--growth-identities 4000 is too small.*at least 18000"):
        too_small.check()
