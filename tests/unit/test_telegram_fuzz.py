"""Property tests: whatever the bytes, TelegramAdapter answers with a result or a 400/422.

Every request carries the right secret, so the parser itself is what is being exercised. Any
event produced must also survive the Kafka encoding unchanged.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.errors import BadPayload, UnprocessablePayload, WebhookRejected
from ingest.events import decode_event, encode_event
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.telegram import TelegramAdapter
from tests.unit.strategies import huge_ints, json_values, scalars

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads" / "telegram"
REAL = {p.stem: json.loads(p.read_bytes()) for p in sorted(PAYLOADS.glob("*.json"))}
CTX = ParseContext(
    channel=Channel(
        id=uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
        tenant_id=uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b"),
        transport="telegram",
        config={"secret_token": "s3cr3t-token"},
    ),
    received_at=datetime(2024, 5, 1, tzinfo=UTC),
    correlation_id="fuzz",
)
HEADERS = {"content-type": "application/json", "x-telegram-bot-api-secret-token": "s3cr3t-token"}
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

adapter = TelegramAdapter()


def check(body: bytes) -> None:
    """The only allowed outcomes: a WebhookResult, or a 400/422 rejection."""
    request = RawRequest(method="POST", url="https://x/", headers=HEADERS, body=body)
    try:
        result = adapter.handle(request, CTX)
    except WebhookRejected as exc:
        rejected: WebhookRejected | None = exc
    else:
        rejected = None
    if rejected is not None:
        assert isinstance(rejected, BadPayload | UnprocessablePayload), rejected
        assert rejected.status_code in (400, 422)
        assert rejected.reason
        event(f"rejected {rejected.status_code}")  # shown by --hypothesis-show-statistics
        return
    assert isinstance(result, WebhookResult)
    assert len(result.events) <= 1
    assert (result.ignored is None) == bool(result.events)
    event("event" if result.events else "ignored")
    for ev in result.events:
        assert decode_event(encode_event(ev)) == ev


# Keys a Telegram parser actually looks at, so random objects reach past the first check.
known_keys = st.sampled_from(
    [
        "update_id", "message", "edited_message", "channel_post", "edited_channel_post",
        "message_id", "date", "edit_date", "chat", "from", "sender_chat", "id", "type", "text",
        "caption", "photo", "document", "voice", "sticker", "file_id", "file_size", "location",
        "latitude", "longitude", "contact", "phone_number", "first_name", "venue",
        "reply_to_message", "forward_origin", "callback_query",
    ]
)  # fmt: skip
update_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(known_keys, inner, max_size=6),
    max_leaves=30,
)
replacements = (
    json_values
    | huge_ints
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
    | st.just("")
    | st.just([])
    | st.just({})
)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(body: bytes) -> None:
    check(body)


@FUZZ
@given(json_values)
def test_random_json_values(value: Any) -> None:
    check(json.dumps(value).encode())


@FUZZ
@given(update_like)
def test_random_update_like_objects(value: Any) -> None:
    if isinstance(value, dict):
        value.setdefault("update_id", 1)
    check(json.dumps(value).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, (*prefix, index))
    return out


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.data())
def test_mutated_real_payloads(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(REAL[name])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(data.draw(replacements, label="value"))
    check(json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode())


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_byte_level_corruption(name: str, at: int, junk: bytes) -> None:
    body = (PAYLOADS / f"{name}.json").read_bytes()
    at %= len(body)
    check(body[:at] + junk + body[at + len(junk) :])


@FUZZ
@given(st.sampled_from(["photo", "document", "voice"]), st.data())
def test_odd_attachments_never_cost_the_message(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(REAL[name])
    media = doc["message"]
    paths = [(name, *p) for p in _paths(media[name])] + [(name,)]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = media
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans(), label="delete"):
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(data.draw(replacements, label="value"))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    if media.get(name) is None:
        media[name] = {}  # null means "absent"; keep the message a media message
    request = RawRequest(
        method="POST", url="https://x/", headers=HEADERS, body=json.dumps(doc).encode()
    )
    result = adapter.handle(request, CTX)
    [ev] = result.events
    assert ev.text.startswith("[")
    assert decode_event(encode_event(ev)) == ev
    if not ev.attachments:
        assert ev.message_meta["attachment_errors"]
