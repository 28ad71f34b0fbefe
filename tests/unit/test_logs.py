"""The log line's processors: secrets masked at any depth, every value written as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

from ingest.logs import REDACTED, _to_json, redact_secrets


def test_secret_keys_are_masked_at_top_level_and_inside_containers() -> None:
    line = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "Secret_Token": "s1",
            "status": 200,
            "headers": {"X-Hub-Signature-256": "sha256=abc", "accept": "*/*"},
            "attempts": [{"password": "p"}, ("auth_token", "kept: a value, not a key")],
        },
    )
    assert line == {
        "event": "x",
        "Secret_Token": REDACTED,
        "status": 200,
        "headers": {"X-Hub-Signature-256": REDACTED, "accept": "*/*"},
        "attempts": [{"password": REDACTED}, ["auth_token", "kept: a value, not a key"]],
    }


def test_values_json_has_no_form_for_are_written_as_text() -> None:
    event_id = uuid.UUID(int=7)
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    line = json.loads(_to_json({"event": "ü", "id": event_id, "at": moment, "n": {1, 2}}))
    assert line == {"event": "ü", "id": str(event_id), "at": "2024-05-01T12:00:00Z", "n": [1, 2]}
    assert json.loads(_to_json({"error": ValueError("bad")})) == {"error": "ValueError('bad')"}


def test_bytes_that_are_not_utf8_still_make_a_line() -> None:
    line = json.loads(_to_json({"event": "raw", "body": b"\xff\xfe"}))
    assert line == {"event": "raw", "body": repr(b"\xff\xfe")}


# Off a terminal, with FastStream imported after the logging was configured (as `consume` does):
# FastStream's import gives "faststream" a coloured stderr handler, and a warning would be
# printed as two plain lines.
_LATE_IMPORT = """
import logging, warnings
from ingest.logs import configure_logging, routed_logger
configure_logging()
import faststream
routed_logger("faststream").info("assigned", extra={"topic": "t", "group_id": "g"})
warnings.warn("a warning")
logging.getLogger("asyncpg").warning("asyncpg")
"""


def run_python(script: str) -> str:
    """stderr of `script` run by a fresh interpreter, its stderr not a terminal."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CRM_INGEST_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    return done.stderr


def test_lines_of_a_library_imported_later_and_warnings_come_out_as_json() -> None:
    records = [json.loads(line) for line in run_python(_LATE_IMPORT).splitlines()]
    assert [(r["logger"], r["level"]) for r in records] == [
        ("faststream", "info"),
        ("py.warnings", "warning"),
        ("asyncpg", "warning"),
    ]
    assert (records[0]["topic"], records[0]["group_id"]) == ("t", "g")


def test_a_library_imported_later_keeps_the_configured_level() -> None:
    script = _LATE_IMPORT.replace("configure_logging()", "configure_logging(level='WARNING')")
    records = [json.loads(line) for line in run_python(script).splitlines()]
    assert [r["logger"] for r in records] == ["py.warnings", "asyncpg"]
