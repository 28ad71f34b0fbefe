"""`run_bench` end to end with a tiny workload on the session's services.

It must complete, verify its rows and report every figure; the figures themselves are not
asserted: benchmarks are commands, not timed tests.
"""

from __future__ import annotations

import argparse
import json

import pytest

from ingest.bench import add_arguments, run_bench
from ingest.bench.report import PHASES
from ingest.config import load_settings
from ingest.embedded import ResolvedServices
from sql.db import connect

pytestmark = pytest.mark.integration

ARGS = ["--events", "2000", "--gateway-requests", "200", "--gateway-rate", "200"]
ARGS += ["--gateway-seconds", "1", "--gateway-concurrency", "8", "--seed", "3"]
ARGS += ["--consumer-processes", "2"]
ARGS += ["--growth-identities", "4000", "--growth-events", "200", "--growth-tenants", "20"]


async def test_bench_runs_every_phase_and_reports_every_figure(
    services: ResolvedServices, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=services.bootstrap_servers,
        producer_idempotence=services.broker_supports_idempotence,
        batch_timeout_ms=50,
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report = await run_bench(settings, parser.parse_args(ARGS))

    # Without the CLI's logging setup, FastStream's own handler writes to stdout as well.
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.split()[:2] == ["phase", "events"] for line in out)
    printed = json.loads(out[-1])
    assert printed == json.loads(json.dumps(report, default=str))
    assert set(printed) >= {"command", "config", "machine", "workload", "phases", "ratios"}
    assert set(printed) >= {"targets", "targets_met", "total_s"}
    assert set(printed["machine"]) >= {"cores", "python", "postgres", "broker", "versions"}
    assert set(printed["machine"]["versions"]) >= {"faststream", "aiokafka", "asyncpg"}
    assert set(printed["ratios"]) == {"d_over_b", "d_over_c", "d_over_min_a_b", "gateway_over_bare"}
    for name in PHASES:
        phase = printed["phases"][name]
        assert phase is not None, name
        assert phase["events"] > 0
        assert phase["seconds"] > 0
        assert phase["events_per_s"] > 0
    assert all(value is not None for value in printed["ratios"].values())
    assert all(t["met"] in (True, False) for t in printed["targets"].values())

    workload = printed["workload"]
    assert (workload["deliveries"], workload["distinct_events"]) == (2000, 1900)
    consumer = printed["phases"]["consumer"]
    assert consumer["events"] == 2000
    assert consumer["offsets_committed"] == 2000
    assert consumer["processes"] == len(consumer["batches_per_process"]) == 2
    assert set(consumer["cpu_us_per_event"]) >= {"postgres", "broker", "children"}
    assert consumer["cpu_us_per_event"]["children"] > 0
    assert consumer["rows"]["crm_chat_messages"] == 1900
    assert consumer["rows"]["crm_clients"] == workload["new_senders"]
    assert consumer["rows"]["crm_chat_message_attachments"] == workload["with_attachments"]
    assert printed["phases"]["db_ceiling"]["tables"]["crm_chat_messages"] == 1900
    sql_path = printed["phases"]["sql_path"]
    assert sql_path["events"] == 2000
    assert sql_path["rows"]["crm_chat_messages"] == 1900
    assert sql_path["cpu_us_per_event"]["bench"] > 0  # the Ingestor runs in the bench process
    assert set(printed["cpu_budget"]) == {
        "us_per_event",
        "total_us_per_event",
        "cores",
        "events_per_s_at_this_cpu",
    }
    growth = printed["phases"]["growth"]
    assert [size["identities"] for size in growth["sizes"]] == [400, 2000 + 20, 4000 + 2 * 20]
    assert [size["messages"] for size in growth["sizes"]] == [400, 2000 + 200, 4000 + 2 * 200]
    for size in growth["sizes"]:
        assert size["events"] == 200
        assert size["known_senders"] == 180
        assert size["blocks_hit_per_event"] > 0  # the known senders' rows are read
        assert size["blocks_read_per_event"] >= 0
        assert size["database_mb"] > 0
        assert size["cpu_us_per_event"]["bench"] > 0  # the Ingestor runs in the bench process
        if services.database_source == "embedded":  # a server of its own is not seen
            assert size["cpu_us_per_event"]["postgres"] > 0
    if services.database_source == "embedded":
        assert growth["largest_over_smallest"]["postgres"] > 0
    assert growth["largest_over_smallest"]["bench"] > 0
    assert any(line.startswith("g  CPU per event, largest / smallest size:") for line in out)
    assert printed["phases"]["baseline"]["events"] == 200
    latency = printed["phases"]["latency"]
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]

    # Databases on a server it was given are dropped again.
    conn = await connect(database_url)
    try:
        left = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'bench_%'")
    finally:
        await conn.close()
    assert left == 0
