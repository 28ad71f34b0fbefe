"""SQL lives here as files: migrations (applied in order) and named queries.

Query files hold blocks of the form::

    -- query_name --
    -- One-line description
    SELECT ...;

parsed once into `QUERIES` (name -> SQL text). Files are read with importlib.resources, so they
are found both from a checkout and from an installed wheel.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$", re.MULTILINE)
# Any fixed 64-bit number; every crm-ingest migrator takes this lock, so two never interleave.
MIGRATION_LOCK_KEY = 0x63726D5F696E6701


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def parse_queries(text: str) -> dict[str, str]:
    """Split a query file into {name: sql}; a duplicate name is an error."""
    queries: dict[str, str] = {}
    parts = _HEADER.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name: {name}")
        lines = body.strip().splitlines()
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"query {name} lacks its one-line description")
        queries[name] = "\n".join(lines[1:]).strip().rstrip(";")
    return queries


def _load_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).joinpath("queries").iterdir(), key=str):
        if entry.name.endswith(".sql"):
            for name, sql in parse_queries(entry.read_text(encoding="utf-8")).items():
                if name in queries:
                    raise ValueError(f"duplicate query name across files: {name}")
                queries[name] = sql
    return queries


def load_migrations() -> list[Migration]:
    migrations = []
    for entry in resources.files(__name__).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            migrations.append(
                Migration(version, rest.removesuffix(".sql"), entry.read_text("utf-8"))
            )
    return sorted(migrations, key=lambda m: m.version)


QUERIES: dict[str, str] = _load_queries()


class MigrationError(RuntimeError):
    """An applied migration no longer matches its file, or a migration failed."""


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the versions applied.

    A session-level advisory lock serialises concurrent migrators: the second waits, then finds
    nothing left to do.
    """
    await conn.execute(QUERIES["lock_migrations"], MIGRATION_LOCK_KEY)
    try:
        await conn.execute(QUERIES["create_migrations_table"])
        rows = await conn.fetch(QUERIES["applied_migrations"])
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[str] = []
        for migration in load_migrations():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    name = f"{migration.version}_{migration.name}"
                    raise MigrationError(f"migration {name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    QUERIES["record_migration"],
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.version)
        return done
    finally:
        await conn.execute(QUERIES["unlock_migrations"], MIGRATION_LOCK_KEY)
