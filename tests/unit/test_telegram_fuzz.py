"""Property tests: whatever the authenticated bytes, no 4xx: events, or the body kept.

Every request carries the right secret, so the parser itself is what is being exercised. Any
event produced must also survive the Kafka encoding unchanged. The properties every JSON webhook
shares (random bytes, JSON values and documents, mutated and corrupted captures) run against
`TARGET` in test_json_webhooks.py.
"""

from __future__ import annotations

import json

from hypothesis import event, given
from hypothesis import strategies as st

from ingest.events import decode_event, encode_event
from ingest.transports.telegram import TelegramAdapter
from tests.unit.adapters import PAYLOADS, context, post
from tests.unit.fuzzing import FUZZ, FUZZ_RECEIVED_AT, JsonFuzzTarget, mutate, outcome, paths
from tests.unit.strategies import objects_with, replacements
from tests.unit.test_telegram import SECRET, make_channel

CAPTURES = {p.stem: p.read_bytes() for p in sorted((PAYLOADS / "telegram").glob("*.json"))}
CTX = context(make_channel(), received_at=FUZZ_RECEIVED_AT, correlation_id="fuzz")
HEADERS = {"content-type": "application/json", "x-telegram-bot-api-secret-token": SECRET}
# Keys a Telegram parser actually looks at, so random objects reach past the first check.
KNOWN_KEYS = [
    "update_id", "message", "edited_message", "channel_post", "edited_channel_post",
    "message_id", "date", "edit_date", "chat", "from", "sender_chat", "id", "type", "text",
    "caption", "photo", "document", "voice", "sticker", "file_id", "file_size", "location",
    "latitude", "longitude", "contact", "phone_number", "first_name", "venue",
    "reply_to_message", "forward_origin", "callback_query",
]  # fmt: skip
REPLACEMENTS = replacements("", [], {})

adapter = TelegramAdapter()


def check(body: bytes) -> None:
    """No 4xx after authentication: at most one event, or the whole body kept, or ignored."""
    taken = outcome(adapter, post("https://x/", body, HEADERS), CTX)
    assert taken is not None
    assert len(taken.events) <= 1
    if taken.kept:
        assert not taken.events
        assert [k.element for k in taken.kept] == [""]
    else:
        assert (taken.result.ignored is None) == bool(taken.events)
    event("event" if taken.events else "kept" if taken.kept else "ignored")


TARGET = JsonFuzzTarget(
    check=check,
    captures=CAPTURES,
    objects=objects_with(KNOWN_KEYS),
    required=("update_id", 1),
    replacements=REPLACEMENTS,
    corrupt_from=2000,
)


@FUZZ
@given(st.sampled_from(["photo", "document", "voice"]), st.data())
def test_odd_attachments_never_cost_the_message(name: str, data: st.DataObject) -> None:
    doc = json.loads(CAPTURES[name])
    media = doc["message"]
    mutate(media, data, REPLACEMENTS, within=[(name, *p) for p in paths(media[name])] + [(name,)])
    if media.get(name) is None:
        media[name] = {}  # null means "absent"; keep the message a media message
    result = adapter.handle(post("https://x/", json.dumps(doc).encode(), HEADERS), CTX)
    [ev] = result.events
    assert ev.text.startswith("[")
    assert decode_event(encode_event(ev)) == ev
    if not ev.attachments:
        assert ev.message_meta["attachment_errors"]
