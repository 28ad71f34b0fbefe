"""Plans of the batch path's statements as the product executes them.

`ExplainingConnection` stands in for the asyncpg connection `handlers.store.write_messages`
is given. Before each statement runs for real, it is prepared under its sql.QUERIES name and
run once more as `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE ...` with the code's own
arguments, inside a savepoint that is rolled back. With `plan_cache_mode =
force_generic_plan` that is the plan a long-lived pooled connection ends up with: the one that
does not see the parameters (unnest estimated at 10 rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

import sql

NAMES = {text: name for name, text in sql.QUERIES.items()}
# Nodes that read a relation; their rows (and the rows they threw away) are entries examined.
SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Bitmap Heap Scan"}


@dataclass(frozen=True)
class Explained:
    """One statement's generic plan, run once on `rows` input rows."""

    name: str
    rows: int
    plan: dict[str, Any]
    ms: float

    @property
    def buffers(self) -> int:
        """Shared buffers the plan touched (hit or read), its subplans included."""
        return int(self.plan["Shared Hit Blocks"]) + int(self.plan["Shared Read Blocks"])

    @property
    def entries(self) -> float:
        """Index entries and heap tuples the scans examined: what they returned, every loop,
        plus what their filters and rechecks removed. A Bitmap Heap Scan's rows were already
        counted by its Bitmap Index Scans, so it adds only what it removed. (Index entries a
        scan skips past inside its own range show only in buffers, hence both bounds.)"""
        total = 0.0
        for node in nodes(self.plan):
            if node["Node Type"] not in SCANS:
                continue
            # EXPLAIN reports rows, and rows removed, per loop (averaged).
            per_loop = float(node.get("Rows Removed by Filter", 0))
            per_loop += float(node.get("Rows Removed by Index Recheck", 0))
            if node["Node Type"] != "Bitmap Heap Scan":
                per_loop += float(node["Actual Rows"])
            total += per_loop * int(node.get("Actual Loops", 1))
        return total

    def per_row(self, value: float) -> float:
        return value / max(self.rows, 1)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.rows} rows, {self.buffers} buffers, {self.entries} entries"]
        for node in nodes(self.plan):
            if node["Node Type"] in SCANS:
                where = node.get("Index Name") or node.get("Relation Name") or ""
                lines.append(
                    f"  {node['Node Type']} {where}: rows {node['Actual Rows']}"
                    f" x {node.get('Actual Loops', 1)} loops,"
                    f" removed {node.get('Rows Removed by Filter', 0)}"
                )
        return "\n".join(lines)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def input_rows(args: Sequence[Any]) -> int:
    """A batch statement's input rows: the length of its (first) array argument, or the count
    a statement without one is given (allocate_client_ids)."""
    for arg in args:
        if isinstance(arg, list):
            return len(arg)
    return next((arg for arg in args if isinstance(arg, int)), 1)


class ExplainingConnection:
    """The subset of asyncpg.Connection the batch path uses; explains, then runs, each call."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.explained: list[Explained] = []

    async def _explain(self, query: str, args: Sequence[Any]) -> None:
        name = NAMES.get(query)
        assert name is not None, f"not a named query of sql/queries: {query[:80]!r}"
        savepoint = self._conn.transaction()
        await savepoint.start()
        await self._conn.execute(f"PREPARE plan_probe AS {query}")
        try:
            # EXPLAIN EXECUTE takes no bind parameters: the arguments go in as typed literals,
            # which EXECUTE evaluates once before it runs the (generic) plan.
            types = await self._conn.fetchval(
                "SELECT parameter_types::text[] FROM pg_prepared_statements"
                " WHERE name = 'plan_probe'"
            )
            literals = [
                await self._conn.fetchval(f"SELECT format('%L::%s', $1::{t}::text, $2::text)", a, t)
                for a, t in zip(args, types, strict=True)
            ]
            result = await self._conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE plan_probe({', '.join(literals)})"
            )
            plans = await self._conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE name = 'plan_probe'"
            )
        finally:
            await savepoint.rollback()  # PREPARE is not transactional: it outlives the rollback
            await self._conn.execute("DEALLOCATE plan_probe")
        assert plans is not None
        assert tuple(plans) == (1, 0), f"{name} was not run with its generic plan"
        top = result[0]
        self.explained.append(
            Explained(name, input_rows(args), top["Plan"], float(top["Execution Time"]))
        )

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        await self._explain(query, args)
        return await self._conn.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        await self._explain(query, args)
        return await self._conn.execute(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        await self._explain(query, args)
        return await self._conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        await self._explain(query, args)
        return await self._conn.fetchval(query, *args)
