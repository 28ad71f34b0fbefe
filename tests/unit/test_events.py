"""The contract's limits on what an event carries, and the kept-webhook record."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from ingest.events import (
    MAX_TEXT_CHARS,
    MessageEvent,
    RawWebhook,
    Sender,
    decode_raw_webhook,
    encode_event,
    encode_raw_webhook,
    raw_webhook_headers,
    raw_webhook_id,
    within_text_limit,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def message(text: str) -> MessageEvent:
    return MessageEvent(
        event_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        channel_id=uuid.uuid4(),
        transport="email",
        conversation_key="k",
        received_at=AT,
        event_type="message.received",
        external_message_id="m-1",
        version=1,
        sent_at=AT,
        sender=Sender(contact_type="email", contact_value="a@example.net", first_name="A"),
        text=text,
        message_meta={"subject": "Hello"},
    )


def test_text_within_the_limit_is_left_alone() -> None:
    event = message("x" * MAX_TEXT_CHARS)
    assert within_text_limit(event) is event


def test_longer_text_is_cut_and_the_cut_recorded() -> None:
    event = message("é" * (MAX_TEXT_CHARS + 5))
    cut = within_text_limit(event)
    assert cut.text == "é" * MAX_TEXT_CHARS
    assert cut.message_meta == {
        "subject": "Hello",
        "text_truncated": {"original_chars": MAX_TEXT_CHARS + 5},
    }
    assert (cut.event_id, cut.version) == (event.event_id, event.version)


def test_a_cut_event_fits_kafkas_default_record_size_even_if_every_char_is_escaped() -> None:
    cut = within_text_limit(message("\x01" * (MAX_TEXT_CHARS * 3)))
    assert len(encode_event(cut)) < 1_000_000


def _raw_webhook(**fields: Any) -> RawWebhook:
    values: dict[str, Any] = {
        "record_id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "channel_id": uuid.uuid4(),
        "transport": "sms",
        "received_at": datetime(2024, 5, 1, tzinfo=UTC),
        "content_type": "application/x-www-form-urlencoded",
        "reason_kind": "unprocessable",
        "reason": "missing From",
        "size_bytes": 3,
        "sha256": "0" * 64,
    }
    return RawWebhook(**(values | fields))


def test_raw_webhook_holds_its_bytes_inline_or_by_reference() -> None:
    inline = _raw_webhook(body=base64.b64encode(b"\x00\xffx").decode())
    assert decode_raw_webhook(encode_raw_webhook(inline)) == inline
    assert inline.inline_bytes() == b"\x00\xffx"
    stored = _raw_webhook(body_ref="s3://bucket/kept/abc")
    assert decode_raw_webhook(encode_raw_webhook(stored)).body_ref == "s3://bucket/kept/abc"
    assert stored.inline_bytes() is None
    for neither_or_both in ({}, {"body": "eA==", "body_ref": "s3://b/k"}):
        with pytest.raises(ValidationError, match="exactly one of body and body_ref"):
            _raw_webhook(**neither_or_both)


def test_raw_webhook_headers_name_it_for_the_consumer() -> None:
    record = _raw_webhook(body="eA==", correlation_id="c-1")
    headers = dict(raw_webhook_headers(record))
    assert headers["event-type"] == b"webhook.raw"
    assert headers["event-id"] == str(record.record_id).encode()
    assert headers["reason-kind"] == b"unprocessable"
    assert headers["correlation-id"] == b"c-1"


def test_raw_webhook_id_is_the_same_for_the_same_bytes_and_element() -> None:
    channel = uuid.uuid4()
    assert raw_webhook_id(channel, "a" * 64, None) == raw_webhook_id(channel, "a" * 64, "")
    assert raw_webhook_id(channel, "a" * 64, "x.0") != raw_webhook_id(channel, "a" * 64, "x.1")
    assert raw_webhook_id(channel, "a" * 64, None) != raw_webhook_id(uuid.uuid4(), "a" * 64, None)
