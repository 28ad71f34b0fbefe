"""What PostgreSQL spends per statement during a phase, from pg_stat_statements, when the
server loads it (`CRM_INGEST_PG_OPTIONS=shared_preload_libraries=pg_stat_statements` for the
embedded one). Without it the phase reports nothing here rather than guessing."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from sql import QUERIES

_SPACE = re.compile(r"\s+")


def _normalized(sql: str) -> str:
    return _SPACE.sub(" ", sql).strip().rstrip(";").strip()


_NAMES = {_normalized(sql): name for name, sql in QUERIES.items()}


async def start(conn: asyncpg.Connection) -> bool:
    """Reset the counters if the server keeps them; False when it does not."""
    loaded = await conn.fetchval("SHOW shared_preload_libraries")
    if "pg_stat_statements" not in loaded:
        return False
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await conn.execute("SELECT pg_stat_statements_reset()")
    return True


async def per_event(conn: asyncpg.Connection, events: int, top: int = 14) -> dict[str, Any]:
    """Execution time and shared blocks per event of this database's statements, largest
    first, named as `sql/queries` names them (COMMIT runs the deferred foreign keys)."""
    rows = await conn.fetch(
        """
        SELECT query, calls, total_exec_time, shared_blks_hit + shared_blks_read AS blocks
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        ORDER BY total_exec_time DESC
        """
    )
    spent: dict[str, dict[str, float]] = {}
    for row in rows:
        text = _normalized(row["query"])
        name = _NAMES.get(text) or text[:40]
        if name.startswith("pg_stat_statements") or "pg_stat_statements" in text:
            continue
        entry = spent.setdefault(name, {"calls": 0, "us_per_event": 0.0, "blocks_per_event": 0.0})
        entry["calls"] += row["calls"]
        entry["us_per_event"] += row["total_exec_time"] * 1000 / events
        entry["blocks_per_event"] += row["blocks"] / events
    ranked = sorted(spent.items(), key=lambda item: -item[1]["us_per_event"])
    return {
        "total_us_per_event": round(sum(e["us_per_event"] for _, e in ranked), 1),
        "statements": {
            name: {
                "calls": int(e["calls"]),
                "us_per_event": round(e["us_per_event"], 2),
                "blocks_per_event": round(e["blocks_per_event"], 2),
            }
            for name, e in ranked[:top]
        },
    }


def table_line(spent: dict[str, Any] | None, prefix: str = "s") -> list[str]:
    """One line for the table: the statements that cost the most, µs per event."""
    if not spent:
        return []
    shown = " · ".join(f"{n} {e['us_per_event']:.1f}" for n, e in spent["statements"].items())
    return [
        f"{prefix}  PostgreSQL by statement (pg_stat_statements, µs per event,"
        f" {spent['total_us_per_event']:.0f} in all): {shown}"
    ]
