"""The SQL files parse, and every query the code names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sql

ROOT = Path(__file__).parents[2]


def test_every_query_named_in_code_exists() -> None:
    code = "\n".join(
        p.read_text() for d in ("ingest", "handlers", "sql") for p in (ROOT / d).rglob("*.py")
    )
    named = set(re.findall(r'QUERIES\["(\w+)"\]', code))
    assert named, "the pattern found no query names: the test would prove nothing"
    assert named <= set(sql.QUERIES), named - set(sql.QUERIES)


def test_every_query_is_used() -> None:
    code = "\n".join(
        p.read_text() for d in ("ingest", "handlers", "sql") for p in (ROOT / d).rglob("*.py")
    )
    unused = {name for name in sql.QUERIES if f'QUERIES["{name}"]' not in code}
    assert unused == set()


def test_query_blocks_need_a_description() -> None:
    with pytest.raises(ValueError, match="description"):
        sql.parse_queries("-- broken --\nSELECT 1;")


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        sql.parse_queries("-- a --\n-- one\nSELECT 1;\n\n-- a --\n-- two\nSELECT 2;")


def test_parse_keeps_sql_without_description_or_semicolon() -> None:
    parsed = sql.parse_queries(
        "-- first --\n-- What it does\nSELECT 1\nFROM t;\n\n-- second --\n-- x\nSELECT 2;\n"
    )
    assert parsed == {"first": "SELECT 1\nFROM t", "second": "SELECT 2"}


def test_migrations_are_ordered_and_uniquely_versioned() -> None:
    versions = [m.version for m in sql.load_migrations()]
    assert versions == sorted(versions)
    assert len(versions) == len(set(versions))
    assert versions[0] == "0001"
