"""Property tests: whatever the (correctly signed) bytes, WhatsAppAdapter answers with a result
or a 400/403/422, and any event it produces survives the Kafka encoding unchanged.

The channel is bound to the samples' phone_number_id, so mutations of `metadata` reach the 403
path too. A separate property checks that an unsigned or mis-signed body is always a 401.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.errors import BadPayload, Forbidden, Unauthorized, UnprocessablePayload, WebhookRejected
from ingest.events import MessageEvent, decode_event, encode_event
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.whatsapp import MAX_UPDATES, UNSUPPORTED, WhatsAppAdapter
from tests.unit.strategies import huge_ints, json_values, scalars

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads" / "whatsapp"
REAL = {p.stem: json.loads(p.read_bytes()) for p in sorted(PAYLOADS.glob("*.json"))}
MESSAGES = sorted(n for n in REAL if n != "batch" and not n.startswith("status_"))
SECRET = "fuzz-app-secret"
CTX = ParseContext(
    channel=Channel(
        id=uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
        tenant_id=uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b"),
        transport="whatsapp",
        config={"verify_token": "v", "app_secret": SECRET, "phone_number_id": "106540352242922"},
    ),
    received_at=datetime(2024, 5, 1, tzinfo=UTC),
    correlation_id="fuzz",
)
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

adapter = WhatsAppAdapter(default_region="US")


def signed(body: bytes) -> RawRequest:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-hub-signature-256": signature}
    return RawRequest(method="POST", url="https://x/", headers=headers, body=body)


def check(body: bytes) -> WebhookResult | None:
    """The only allowed outcomes: a WebhookResult, or a 400/403/422 rejection."""
    try:
        result = adapter.handle(signed(body), CTX)
    except WebhookRejected as exc:
        rejected: WebhookRejected | None = exc
    else:
        rejected = None
    if rejected is not None:
        assert isinstance(rejected, BadPayload | Forbidden | UnprocessablePayload), rejected
        assert rejected.status_code in (400, 403, 422)
        assert 0 < len(rejected.reason) <= 200
        event(f"rejected {rejected.status_code}")  # shown by --hypothesis-show-statistics
        return None
    assert isinstance(result, WebhookResult)
    assert len(result.events) <= MAX_UPDATES
    assert result.events or result.ignored
    event("events" if result.events else "ignored")
    for ev in result.events:
        assert decode_event(encode_event(ev)) == ev
        if isinstance(ev, MessageEvent):
            assert ev.sender.first_name.strip()
            assert ev.conversation_key.endswith(ev.sender.contact_value)
    return result


# Keys a Cloud API parser actually looks at, so random objects reach past the first checks.
known_keys = st.sampled_from(
    [
        "object", "entry", "id", "changes", "field", "value", "metadata", "phone_number_id",
        "display_phone_number", "contacts", "profile", "name", "wa_id", "user_id", "messages",
        "statuses", "from", "timestamp", "type", "text", "body", "image", "audio", "voice",
        "document", "caption", "filename", "location", "latitude", "longitude", "reaction",
        "message_id", "emoji", "interactive", "button_reply", "title", "edit", "revoke",
        "original_message_id", "message", "context", "errors", "status", "recipient_id",
    ]
)  # fmt: skip
envelope_like = st.recursive(
    scalars | st.sampled_from(["whatsapp_business_account", "messages", "text", "106540352242922"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(known_keys, inner, max_size=6),
    max_leaves=40,
)
replacements = (
    json_values
    | huge_ints
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
    | st.sampled_from(["", [], {}, "0", "1697043379", "wamid.x", "972987654321", "+1 555"])
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
@given(envelope_like)
def test_random_envelope_like_objects(value: Any) -> None:
    if isinstance(value, dict):
        value.setdefault("object", "whatsapp_business_account")
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


def _mutate(doc: Any, paths: list[tuple[Any, ...]], data: st.DataObject) -> None:
    """Delete or replace 1-3 of `paths` in `doc` (a drawn value is deep-copied: no aliasing)."""
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths), label="path")
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans(), label="delete"):
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(data.draw(replacements, label="value"))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.data())
def test_mutated_real_envelopes(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(REAL[name])
    _mutate(doc, _paths(doc), data)
    check(json.dumps(doc, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode())


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.integers(0, 5000), st.binary(min_size=1, max_size=8))
def test_byte_level_corruption(name: str, at: int, junk: bytes) -> None:
    body = (PAYLOADS / f"{name}.json").read_bytes()
    at %= len(body)
    check(body[:at] + junk + body[at + len(junk) :])


# The message fields that name, date and type it; everything else is content, read leniently.
_IDENTITY = {"id", "from", "timestamp", "type"}
_KINDS = ["text", "image", "audio", "document", "location", "contacts", "interactive", "button"]
_KINDS += ["reaction", "edit", "revoke", "unsupported", "order", "sticker", "video", "system"]


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_odd_content_never_costs_the_message(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(REAL[name])
    value = doc["entry"][0]["changes"][0]["value"]
    msg = value["messages"][0]
    paths = [("messages", 0, *p) for p in _paths(msg) if p[0] not in _IDENTITY]
    paths += [("contacts", *p) for p in _paths(value["contacts"])] + [("contacts",), ("errors",)]
    _mutate(value, paths, data)
    if data.draw(st.booleans(), label="retype"):
        msg["type"] = data.draw(st.sampled_from(_KINDS), label="type")
    result = check(json.dumps(doc).encode())
    assert result is not None
    [ev] = result.events
    assert isinstance(ev, MessageEvent)
    assert ev.sender.contact_value == "+" + msg["from"]
    if ev.text == UNSUPPORTED:
        event(f"unsupported {msg.get('type')!r}"[:60])


@FUZZ
@given(st.sampled_from(["image_url", "document_forwarded", "voice", "edit"]), st.data())
def test_odd_attachments_never_cost_the_message(name: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(REAL[name])
    msg = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    holder = msg["edit"]["message"] if name == "edit" else msg
    kind = holder["type"]
    _mutate(holder, [(kind, *p) for p in _paths(holder[kind])] + [(kind,)], data)
    result = check(json.dumps(doc).encode())
    assert result is not None
    [ev] = result.events
    assert isinstance(ev, MessageEvent)
    assert ev.text
    if not ev.attachments:
        assert ev.message_meta["attachment_errors"]


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.data())
def test_bad_signatures_are_always_unauthorized(name: str, data: st.DataObject) -> None:
    body = (PAYLOADS / f"{name}.json").read_bytes()
    good = signed(body).headers["x-hub-signature-256"]
    header = data.draw(
        st.none()
        | st.text(max_size=80)
        | st.just(good[:-1] + ("0" if good[-1] != "0" else "1"))
        | st.builds(lambda h: "sha256=" + h, st.text("0123456789abcdef", min_size=64, max_size=64)),
        label="header",
    )
    if data.draw(st.booleans(), label="tamper") and header == good:
        body = body[:-2] + b" }"
    elif header == good:
        return
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["x-hub-signature-256"] = header
    request = RawRequest(method="POST", url="https://x/", headers=headers, body=body)
    with pytest.raises(Unauthorized):
        adapter.handle(request, CTX)
