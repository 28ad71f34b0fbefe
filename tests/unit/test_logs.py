"""The log line's processors: secrets masked at any depth, every value written as JSON."""

from __future__ import annotations

import json
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
