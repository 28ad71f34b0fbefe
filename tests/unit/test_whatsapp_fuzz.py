"""Property tests: whatever the (correctly signed) bytes, no 4xx: events (surviving the Kafka
encoding unchanged), and what cannot become events kept whole or element by element.

The channel is bound to the samples' phone_number_id, so mutations of `metadata` reach the
channel-mismatch path too. A separate property checks that an unsigned or mis-signed body is
always a 401. The properties every JSON webhook shares (random bytes, JSON values and
documents, mutated and corrupted captures) run against `TARGET` in test_json_webhooks.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from ingest.errors import Unauthorized
from ingest.events import MessageEvent
from ingest.intake import Taken
from ingest.transports.base import RawRequest
from ingest.transports.whatsapp import MAX_UPDATES, UNSUPPORTED, WhatsAppAdapter
from tests.unit.adapters import PAYLOADS, channel, context, post
from tests.unit.fuzzing import FUZZ, FUZZ_RECEIVED_AT, JsonFuzzTarget, mutate, outcome, paths
from tests.unit.strategies import objects_with, replacements, scalars
from tests.unit.test_whatsapp import CHANNEL_ID, PHONE_NUMBER_ID

CAPTURES = {p.stem: p.read_bytes() for p in sorted((PAYLOADS / "whatsapp").glob("*.json"))}
MESSAGES = sorted(n for n in CAPTURES if n != "batch" and not n.startswith("status_"))
SECRET = "fuzz-app-secret"
CONFIG = {"verify_token": "v", "app_secret": SECRET, "phone_number_id": PHONE_NUMBER_ID}
CTX = context(
    channel("whatsapp", CHANNEL_ID, CONFIG), received_at=FUZZ_RECEIVED_AT, correlation_id="fuzz"
)

adapter = WhatsAppAdapter(default_region="US")


def signed(body: bytes) -> RawRequest:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return post(
        "https://x/", body, {"content-type": "application/json", "x-hub-signature-256": signature}
    )


def check(body: bytes) -> Taken:
    """No 4xx after authentication: events, kept elements or the kept body, or ignored."""
    taken = outcome(adapter, signed(body), CTX)
    assert taken is not None
    result = taken.result
    assert len(taken.events) <= MAX_UPDATES
    assert taken.events or result.ignored or taken.kept
    if any(not k.element for k in taken.kept):
        assert not taken.events
        assert len(taken.kept) == 1
    event("events" if taken.events else "kept" if taken.kept else "ignored")
    for ev in taken.events:
        if isinstance(ev, MessageEvent):
            assert ev.sender.first_name.strip()
            assert ev.conversation_key.endswith(ev.sender.contact_value)
    return result


# Keys a Cloud API parser actually looks at, so random objects reach past the first checks.
KNOWN_KEYS = [
    "object", "entry", "id", "changes", "field", "value", "metadata", "phone_number_id",
    "display_phone_number", "contacts", "profile", "name", "wa_id", "user_id", "messages",
    "statuses", "from", "timestamp", "type", "text", "body", "image", "audio", "voice",
    "document", "caption", "filename", "location", "latitude", "longitude", "reaction",
    "message_id", "emoji", "interactive", "button_reply", "title", "edit", "revoke",
    "original_message_id", "message", "context", "errors", "status", "recipient_id",
]  # fmt: skip
SCALARS = scalars | st.sampled_from(
    ["whatsapp_business_account", "messages", "text", PHONE_NUMBER_ID]
)
REPLACEMENTS = replacements("", [], {}, "0", "1697043379", "wamid.x", "972987654321", "+1 555")
TARGET = JsonFuzzTarget(
    check=check,
    captures=CAPTURES,
    objects=objects_with(KNOWN_KEYS, leaves=SCALARS, max_leaves=40),
    required=("object", "whatsapp_business_account"),
    replacements=REPLACEMENTS,
    corrupt_from=5000,
)

# The message fields that name, date and type it; everything else is content, read leniently.
_IDENTITY = {"id", "from", "timestamp", "type"}
_KINDS = ["text", "image", "audio", "document", "location", "contacts", "interactive", "button"]
_KINDS += ["reaction", "edit", "revoke", "unsupported", "order", "sticker", "video", "system"]


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_odd_content_never_costs_the_message(name: str, data: st.DataObject) -> None:
    doc = json.loads(CAPTURES[name])
    value = doc["entry"][0]["changes"][0]["value"]
    msg = value["messages"][0]
    contents = [("messages", 0, *p) for p in paths(msg) if p[0] not in _IDENTITY]
    contents += [("contacts", *p) for p in paths(value["contacts"])] + [("contacts",), ("errors",)]
    mutate(value, data, REPLACEMENTS, within=contents)
    if data.draw(st.booleans(), label="retype"):
        msg["type"] = data.draw(st.sampled_from(_KINDS), label="type")
    result = check(json.dumps(doc).encode())
    assert not result.kept
    [ev] = result.events
    assert isinstance(ev, MessageEvent)
    assert ev.sender.contact_value == "+" + msg["from"]
    if ev.text == UNSUPPORTED:
        event(f"unsupported {msg.get('type')!r}"[:60])


@FUZZ
@given(st.sampled_from(["image_url", "document_forwarded", "voice", "edit"]), st.data())
def test_odd_attachments_never_cost_the_message(name: str, data: st.DataObject) -> None:
    doc = json.loads(CAPTURES[name])
    msg = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    holder = msg["edit"]["message"] if name == "edit" else msg
    kind = holder["type"]
    mutate(holder, data, REPLACEMENTS, within=[(kind, *p) for p in paths(holder[kind])] + [(kind,)])
    result = check(json.dumps(doc).encode())
    assert not result.kept
    [ev] = result.events
    assert isinstance(ev, MessageEvent)
    assert ev.text
    if not ev.attachments:
        assert ev.message_meta["attachment_errors"]


@FUZZ
@given(st.sampled_from(sorted(CAPTURES)), st.data())
def test_bad_signatures_are_always_unauthorized(name: str, data: st.DataObject) -> None:
    body = CAPTURES[name]
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
    headers = {"content-type": "application/json", "x-hub-signature-256": header}  # None: unsigned
    with pytest.raises(Unauthorized):
        adapter.handle(post("https://x/", body, headers), CTX)
