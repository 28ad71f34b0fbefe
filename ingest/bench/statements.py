"""What PostgreSQL spends per statement during a phase, from pg_stat_statements, when the
server loads it (`CRM_INGEST_PG_OPTIONS=shared_preload_libraries=pg_stat_statements` for the
embedded one). Without it the phase reports nothing here rather than guessing."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from sql import QUERIES

_SPACE = re.compile(r"\s+")
_COMMENT = re.compile(r"--[^\n]*")


def _normalized(sql: str) -> str:
    return _SPACE.sub(" ", _COMMENT.sub("", sql)).strip().rstrip(";").strip()


_TEXTS = {name: _normalized(sql) for name, sql in QUERIES.items()}


def _name(text: str) -> str:
    """The named query a recorded text is: pg_stat_statements shows constants as $n, so the
    longest common prefix decides; anything else is shown by its start."""

    def common(a: str, b: str) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    best = max(_TEXTS, key=lambda name: common(_TEXTS[name], text))
    return best if common(_TEXTS[best], text) >= 40 else text[:40]


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
          AND toplevel  -- a foreign key's check runs inside its statement: counted there
        ORDER BY total_exec_time DESC
        """
    )
    spent: dict[str, dict[str, float]] = {}
    for row in rows:
        text = _normalized(row["query"])
        if "pg_stat_statements" in text or "typeinfo_tree" in text:  # ours and asyncpg's
            continue
        # A deferred foreign key is checked at COMMIT, one top-level query per referenced table.
        name = "foreign keys at COMMIT" if "FOR KEY SHARE OF" in text else _name(text)
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
