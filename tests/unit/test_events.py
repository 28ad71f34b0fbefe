"""The contract's limits on what an event carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ingest.events import MAX_TEXT_CHARS, MessageEvent, Sender, encode_event, within_text_limit

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
