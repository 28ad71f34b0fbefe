"""The README documents every setting, and its two commands are the ones CI and make run."""

from __future__ import annotations

import re
from pathlib import Path

from ingest.config import Settings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias.choices[0] if alias is not None else f"CRM_INGEST_{field.upper()}"  # type: ignore[union-attr]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", README, re.MULTILINE))
    assert {env_name(f) for f in Settings.model_fields} == table


def test_documented_defaults_match_the_code() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, re.MULTILINE))
    for field, info in Settings.model_fields.items():
        documented = rows[env_name(field)].strip().strip("`")
        default = info.default
        if default in ("", None):
            assert documented.startswith("*("), field
        elif isinstance(default, bool):
            assert documented == str(default).lower(), field
        else:
            assert documented == str(default), field


def test_the_two_commands_exist_and_ci_runs_the_test_one() -> None:
    assert "make dev" in README
    assert "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dev:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_test_runs_the_integration_tests_again_on_the_oldest_postgresql() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: lint\n", 1)[1].split("\n\n", 1)[0]
    assert "$(MAKE) --no-print-directory test-oldest-pg" in recipe
    oldest = makefile.split("\ntest-oldest-pg: install\n", 1)[1].split("\n\n", 1)[0]
    second_run = 'CRM_INGEST_PG_BIN="$(PG_OLDEST_BIN)" $(BIN)/pytest tests/integration tests/plans'
    assert second_run in oldest
    assert '[ -n "$$CI" ]' in oldest  # in CI a missing PostgreSQL 15 fails, never skips
    assert "exit 1" in oldest
    assert "PG_OLDEST_BIN ?= /usr/lib/postgresql/15/bin" in makefile
    assert "apt-get install -y -qq postgresql-15" in (ROOT / ".ci" / "run").read_text()
