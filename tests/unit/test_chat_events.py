"""The outbox's hand-built payloads are exactly what the contract models serialize to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, TypeAdapter

from handlers import chat_events
from handlers.pg import naive_utc
from ingest.events import chat_event_adapter, uuid5_text

TENANT = uuid.UUID("11111111-1111-4111-8111-111111111111")
MEMBER = uuid.UUID("22222222-2222-4222-8222-222222222222")
COMMAND = uuid.UUID("33333333-3333-4333-8333-333333333333")
AT = datetime(2024, 5, 14, 7, 21, 7, 250000, tzinfo=UTC)
NAIVE = datetime(2024, 5, 14, 9, 0)  # columns hold UTC wall time


def row(**values: object) -> dict[str, object]:
    return values


PAYLOADS = {
    "client.created": chat_events.client_created(
        TENANT,
        7,
        9,
        AT,
        first_name="Ирина",
        last_name=None,
        phone_number="+15555550100",
        email=None,
    ),
    "chat.created": chat_events.chat_created(TENANT, 7, 9, AT),
    "client.updated": chat_events.client_renamed(
        row(
            client_id=7,
            tenant_id=TENANT,
            old_first_name="+15555550100",
            old_last_name=None,
            first_name="Ирина",
            last_name="Киселёва",
            version=1715671267000,
        ),
        9,
        AT,
    ),
    "client.updated phone": chat_events.client_updated(
        TENANT,
        7,
        9,
        AT,
        [{"field": "phone_number", "old": None, "new": "+15555550100"}],
        "phone_number",
        "+15555550100",
    ),
    "client.identity_conflict": chat_events.identity_conflict(
        row(
            tenant_id=TENANT,
            contact_type="whatsapp",
            contact_value="+15555550100",
            linked_value="US.13491208655302741918",
            client_id=7,
            linked_client_id=8,
        ),
        9,
        AT,
    ),
    "message.created": chat_events.message_created(
        tenant_id=TENANT,
        client_id=7,
        chat_id=9,
        member_id=MEMBER,
        message_id=42,
        transport="whatsapp",
        text="hi",
        sent_at=AT,
        attachments=[chat_events.attachment(5, "image", "whatsapp:1", "image/jpeg", None, 10)],
    ),
    "message.updated edit": chat_events.message_edited(
        TENANT, 7, 9, row(id=42, sent_at=NAIVE, read_at=None), "edited", 1715671267000, AT
    ),
    "message.updated status": chat_events.status_changed(
        row(
            tenant_id=TENANT,
            client_id=7,
            chat_id=9,
            message_id=42,
            status="read",
            status_at=NAIVE,
            sent_at=NAIVE,
            read_at=NAIVE,
            command_id=None,
        )
    ),
    "message.updated attachment stored": chat_events.attachment_changed(
        row(tenant_id=TENANT, client_id=7, chat_id=9, message_id=42, upload_id=5, attempts=1),
        {
            "status": "stored",
            "path": "s3://media/media/t/5",
            "size": 10,
            "hash": "ab" * 32,
            "mimetype": "image/jpeg",
            "error": None,
        },
    ),
    "message.updated attachment failed": chat_events.attachment_changed(
        row(tenant_id=TENANT, client_id=7, chat_id=9, message_id=42, upload_id=5, attempts=2),
        {
            "status": "failed",
            "path": None,
            "size": None,
            "hash": None,
            "mimetype": None,
            "error": "channel has no bot_token",
        },
    ),
    "message.created outbound": chat_events.message_created(
        tenant_id=TENANT,
        client_id=7,
        chat_id=9,
        member_id=MEMBER,
        message_id=43,
        transport="telegram",
        text="Your order has shipped",
        sent_at=None,
        attachments=[],
        command_id=COMMAND,
        at=AT,
    ),
    "message.updated accepted": chat_events.send_accepted(TENANT, 7, 9, 43, COMMAND, AT),
    "message.updated status of a reply": chat_events.status_changed(
        row(
            tenant_id=TENANT,
            client_id=7,
            chat_id=9,
            message_id=43,
            status="delivered",
            status_at=NAIVE,
            sent_at=NAIVE,
            read_at=None,
            command_id=COMMAND,
        )
    ),
    "message.updated failed": chat_events.send_failed(
        TENANT, 7, 9, 43, COMMAND, AT, code="131047", message="outside the window", retryable=False
    ),
}


@pytest.mark.parametrize("name", PAYLOADS)
def test_payload_is_the_models_serialization(name: str) -> None:
    payload = PAYLOADS[name]
    model = chat_event_adapter.validate_python(payload)
    assert model.model_dump(mode="json") == payload


def test_ids_are_deterministic_and_distinct_per_change() -> None:
    again = chat_events.chat_created(TENANT, 7, 9, AT)
    assert again["event_id"] == PAYLOADS["chat.created"]["event_id"]
    ids = {p["event_id"] for p in PAYLOADS.values()}
    assert len(ids) == len(PAYLOADS)


def test_naive_column_times_are_utc() -> None:
    assert PAYLOADS["message.updated status"]["read_at"] == "2024-05-14T09:00:00Z"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 5, 14, 9, 0, tzinfo=UTC),
        TypeAdapter(AwareDatetime).validate_python("2024-05-14T09:00:00.123456Z"),  # pydantic's tz
        datetime(2024, 5, 14, 11, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 5, 14, 3, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
def test_timestamps_are_written_as_pydantic_writes_them(moment: datetime) -> None:
    assert chat_events.timestamp(moment) == TypeAdapter(AwareDatetime).dump_python(
        moment.astimezone(UTC), mode="json"
    )
    assert chat_events.timestamp(naive_utc(moment)) == chat_events.timestamp(moment)
    assert naive_utc(moment) == moment.astimezone(UTC).replace(tzinfo=None)


@settings(max_examples=300, deadline=None)
@given(namespace=st.uuids(), name=st.text())
def test_chat_event_ids_are_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_client_updated_lists_only_the_fields_that_changed() -> None:
    assert PAYLOADS["client.updated"]["changes"] == [
        {"field": "first_name", "old": "+15555550100", "new": "Ирина"},
        {"field": "last_name", "old": None, "new": "Киселёва"},
    ]
    same_last = chat_events.client_renamed(
        row(
            client_id=7,
            tenant_id=TENANT,
            old_first_name="Ira",
            old_last_name="K",
            first_name="Irina",
            last_name="K",
            version=1715671268000,
        ),
        9,
        AT,
    )
    assert same_last["changes"] == [{"field": "first_name", "old": "Ira", "new": "Irina"}]
    assert same_last["event_id"] != PAYLOADS["client.updated"]["event_id"]
