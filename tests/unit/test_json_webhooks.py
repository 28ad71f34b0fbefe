"""What every JSON webhook (Telegram, WhatsApp) does alike: authentication before the body is
read, refusing what is not a JSON object, ids per channel, the request context in each event,
and surviving any bytes or JSON value at all.

Both adapters go through `ingest.transports.base.parse_json_body`; these cases run against each
adapter end to end (authenticated requests unless said otherwise), so a transport that stopped
using the shared boundary would fail here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import BadPayload, Unauthorized
from ingest.events import decode_event, encode_event
from ingest.transports.base import Channel, WebhookResult
from tests.unit import test_telegram, test_telegram_fuzz, test_whatsapp, test_whatsapp_fuzz
from tests.unit.adapters import PAYLOADS, RECEIVED_AT, context
from tests.unit.fuzzing import FUZZ, corrupt, mutate
from tests.unit.strategies import json_values


class JsonWebhook(NamedTuple):
    handle: Callable[..., WebhookResult]  # (body, *, ctx=None, content_type=..., <credential>=...)
    raw: Callable[[str], bytes]  # a captured payload by name
    make_channel: Callable[[], Channel]
    credential: str  # the keyword of `handle` that sets the header proving origin


WEBHOOKS = {
    "telegram": JsonWebhook(
        test_telegram.handle,
        test_telegram.raw,
        test_telegram.make_channel,
        "secret",
    ),
    "whatsapp": JsonWebhook(
        test_whatsapp.handle,
        test_whatsapp.raw,
        test_whatsapp.make_channel,
        "signature",
    ),
}
FUZZ_TARGETS = {"telegram": test_telegram_fuzz.TARGET, "whatsapp": test_whatsapp_fuzz.TARGET}
transports = pytest.mark.parametrize("transport", sorted(WEBHOOKS))
# The captures that are acknowledged without an event (every other one yields at least one).
WITHOUT_EVENTS = {"telegram/callback_query"}
CAPTURES = sorted(f"{t}/{p.stem}" for t in WEBHOOKS for p in (PAYLOADS / t).glob("*.json"))


# --- authentication comes first ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transport", "reason"),
    [
        ("telegram", "missing X-Telegram-Bot-Api-Secret-Token"),
        ("whatsapp", "missing X-Hub-Signature-256"),
    ],
)
def test_missing_credential_is_unauthorized(transport: str, reason: str) -> None:
    webhook = WEBHOOKS[transport]
    with pytest.raises(Unauthorized) as info:
        webhook.handle(webhook.raw("text_official"), **{webhook.credential: None})
    assert info.value.status_code == 401
    assert info.value.reason == reason


@transports
@pytest.mark.parametrize("credential", [None, "wrong", "sha256=" + "0" * 64])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
@pytest.mark.parametrize("body", [b"{not json", b"", b"[]"])
def test_credential_is_checked_before_parsing(
    transport: str, credential: str | None, content_type: str, body: bytes
) -> None:
    webhook = WEBHOOKS[transport]
    with pytest.raises(Unauthorized):
        webhook.handle(body, content_type=content_type, **{webhook.credential: credential})


# --- what is not a JSON object -------------------------------------------------------------------


@transports
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"\xff\xfe{}", b'{"update_id": 1', b'{"object": 1', b"{'a': 1}"],
)
def test_malformed_json_is_bad_payload(transport: str, body: bytes) -> None:
    with pytest.raises(BadPayload) as info:
        WEBHOOKS[transport].handle(body)
    assert info.value.status_code == 400
    assert info.value.reason.startswith("malformed JSON")


@transports
@pytest.mark.parametrize("body", [b"[]", b"null", b'"update"', b"42", b"[{}]", b"NaN"])
def test_non_object_is_bad_payload(transport: str, body: bytes) -> None:
    with pytest.raises(BadPayload, match="expected a JSON object"):
        WEBHOOKS[transport].handle(body)


@pytest.mark.parametrize(
    ("transport", "envelope_start"),
    [("telegram", b'{"update_id": 1, '), ("whatsapp", b'{"object": "whatsapp_business_account", ')],
)
def test_deep_nesting_is_rejected(transport: str, envelope_start: bytes) -> None:
    with pytest.raises(BadPayload):
        WEBHOOKS[transport].handle(envelope_start + b'"x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")


@transports
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_bad_payload(transport: str, content_type: str | None) -> None:
    webhook = WEBHOOKS[transport]
    with pytest.raises(BadPayload, match="expected application/json"):
        webhook.handle(webhook.raw("text_official"), content_type=content_type)


@transports
@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_content_type_parameters_are_allowed(transport: str, content_type: str) -> None:
    webhook = WEBHOOKS[transport]
    assert len(webhook.handle(webhook.raw("text_official"), content_type=content_type).events) == 1


# --- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", CAPTURES)
def test_every_capture_round_trips(capture: str) -> None:
    transport, name = capture.split("/")
    webhook = WEBHOOKS[transport]
    result = webhook.handle(webhook.raw(name))
    assert bool(result.events) == (capture not in WITHOUT_EVENTS)
    for event in result.events:
        assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    ("transport", "name"), [("telegram", "text_official"), ("whatsapp", "reply")]
)
def test_event_id_depends_on_the_channel(transport: str, name: str) -> None:
    webhook = WEBHOOKS[transport]
    own = webhook.make_channel()
    other = Channel(
        id=uuid.uuid4(), tenant_id=own.tenant_id, transport=own.transport, config=own.config
    )
    [ours] = webhook.handle(webhook.raw(name)).events
    [theirs] = webhook.handle(webhook.raw(name), ctx=context(other)).events
    assert theirs.event_id != ours.event_id


@pytest.mark.parametrize(
    ("transport", "name"), [("telegram", "text_official"), ("whatsapp", "batch")]
)
def test_context_is_copied_into_the_events(transport: str, name: str) -> None:
    webhook = WEBHOOKS[transport]
    ctx = context(webhook.make_channel(), correlation_id=None)
    result = webhook.handle(webhook.raw(name), ctx=ctx)
    assert result.events
    for event in result.events:
        assert event.correlation_id is None
        assert event.received_at == RECEIVED_AT


# --- any bytes at all (each transport's `check` says which outcomes are allowed) ---------------


@transports
@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(transport: str, body: bytes) -> None:
    FUZZ_TARGETS[transport].check(body)


@transports
@FUZZ
@given(json_values)
def test_random_json_values(transport: str, value: Any) -> None:
    FUZZ_TARGETS[transport].check(json.dumps(value).encode())


@transports
@FUZZ
@given(st.data())
def test_random_documents_with_known_keys(transport: str, data: st.DataObject) -> None:
    target = FUZZ_TARGETS[transport]
    value = data.draw(target.objects, label="document")
    if isinstance(value, dict):
        value.setdefault(*target.required)
    target.check(json.dumps(value).encode())


@transports
@FUZZ
@given(st.data())
def test_mutated_captures(transport: str, data: st.DataObject) -> None:
    target = FUZZ_TARGETS[transport]
    doc = json.loads(target.captures[data.draw(st.sampled_from(sorted(target.captures)))])
    mutate(doc, data, target.replacements)
    target.check(json.dumps(doc, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode())


@transports
@FUZZ
@given(st.data(), st.binary(min_size=1, max_size=8))
def test_byte_level_corruption(transport: str, data: st.DataObject, junk: bytes) -> None:
    target = FUZZ_TARGETS[transport]
    body = target.captures[data.draw(st.sampled_from(sorted(target.captures)), label="name")]
    target.check(corrupt(body, data.draw(st.integers(0, target.corrupt_from), label="at"), junk))
