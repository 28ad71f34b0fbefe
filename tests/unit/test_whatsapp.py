"""WhatsAppAdapter: the real payloads of providers.md §2, signatures, handshake, ids, rejections."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.errors import (
    BadPayload,
    ChannelConfigError,
    Forbidden,
    Unauthorized,
    UnprocessablePayload,
)
from ingest.events import (
    Attachment,
    MessageEvent,
    Sender,
    StatusEvent,
    conversation_key,
    decode_event,
    encode_event,
    make_event_id,
)
from ingest.events import utc_from_unix as ts
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.whatsapp import MAX_UPDATES, SIGNATURE_HEADER, WhatsAppAdapter
from tests.unit.adapters import PAYLOADS, RECEIVED_AT, TENANT_ID, captured, channel, context

CHANNEL_ID = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "verify-me"
PHONE_NUMBER_ID = "106540352242922"
_SIGN = object()  # sign the body with APP_SECRET
_MISSING = object()

adapter = WhatsAppAdapter()


def make_channel(config: dict[str, Any] | None = None) -> Channel:
    cfg = {"verify_token": VERIFY_TOKEN, "app_secret": APP_SECRET} if config is None else config
    return channel("whatsapp", CHANNEL_ID, cfg)


def make_ctx(channel: Channel | None = None, correlation_id: str | None = "corr-1") -> ParseContext:
    return context(channel or make_channel(), correlation_id=correlation_id)


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def to_bytes(body: bytes | str | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(body, dict | list):
        body = json.dumps(body)
    return body.encode() if isinstance(body, str) else body


def make_request(
    body: bytes | str | dict[str, Any] | list[Any],
    signature: object = _SIGN,
    content_type: str | None = "application/json",
) -> RawRequest:
    data = to_bytes(body)
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if signature is _SIGN:
        headers[SIGNATURE_HEADER.lower()] = sign(data)
    elif signature is not _MISSING:
        headers[SIGNATURE_HEADER.lower()] = str(signature)
    return RawRequest(
        method="POST", url="https://x/webhooks/whatsapp/c", headers=headers, body=data
    )


def raw(name: str) -> bytes:
    return captured("whatsapp", f"{name}.json")


def payload(name: str) -> dict[str, Any]:
    return json.loads(raw(name))


def handle(
    body: bytes | str | dict[str, Any] | list[Any],
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> WebhookResult:
    return adapter.handle(make_request(body, **kwargs), make_ctx(make_channel(config)))


def events(body: bytes | str | dict[str, Any]) -> list[MessageEvent | StatusEvent]:
    result = handle(body)
    for event in result.events:
        assert decode_event(encode_event(event)) == event
    return result.events


def one_message(body: bytes | str | dict[str, Any]) -> MessageEvent:
    result = handle(body)
    assert result.ignored is None
    [event] = result.events
    assert isinstance(event, MessageEvent)
    assert decode_event(encode_event(event)) == event
    return event


def one_status(body: bytes | str | dict[str, Any]) -> StatusEvent:
    result = handle(body)
    assert result.ignored is None
    [event] = result.events
    assert isinstance(event, StatusEvent)
    assert decode_event(encode_event(event)) == event
    return event


def value_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["entry"][0]["changes"][0]["value"]


def message_of(doc: dict[str, Any]) -> dict[str, Any]:
    return value_of(doc)["messages"][0]


def message_with(**fields: Any) -> dict[str, Any]:
    """The pywa envelope (text message of Test Name) with the message's content replaced."""
    doc = payload("reply")
    msg = message_of(doc)
    for key in ("context", "text", "type"):
        del msg[key]
    msg.update(fields)
    return doc


BUSINESS = {
    "phone_number_id": PHONE_NUMBER_ID,
    "display_phone_number": "15550783881",
    "waba_id": "102290129340398",
}
TEST_NAME = Sender(
    contact_type="whatsapp",
    contact_value="+972987654321",
    first_name="Test Name",
    phone_e164="+972987654321",
)
TEST_NAME_META = {
    "wa_id": "972987654321",
    "user_id": "US.13491208655302741918",
    "parent_user_id": "US.ENT.11815799212886844830",
    "phone": "+972987654321",
    **BUSINESS,
}


def assert_message(
    event: MessageEvent, wamid: str, timestamp: int, kind: str = "message.received"
) -> None:
    assert event.schema_version == 1
    assert event.tenant_id == TENANT_ID
    assert event.channel_id == CHANNEL_ID
    assert event.transport == "whatsapp"
    assert event.received_at == RECEIVED_AT
    assert event.correlation_id == "corr-1"
    assert event.event_type == kind
    assert event.version == timestamp * 1000
    assert event.sent_at == ts(timestamp)
    assert event.event_id == make_event_id(CHANNEL_ID, "whatsapp", wamid, kind, timestamp * 1000)
    key = conversation_key(TENANT_ID, "whatsapp", event.sender.contact_value)
    assert event.conversation_key == key


# --- the message payloads of providers.md §2, field by field -------------------------------------


def test_text_official() -> None:
    event = one_message(raw("text_official"))
    wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    assert_message(event, wamid, 1749416383)
    assert event.external_message_id == wamid
    assert event.sent_at == datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)
    assert event.edited_at is None
    assert event.sender == Sender(
        contact_type="whatsapp",
        contact_value="+16505551234",
        first_name="Sheena Nelson",
        phone_e164="+16505551234",
    )
    assert event.conversation_key == f"{TENANT_ID}:whatsapp:+16505551234"
    assert event.text == "Does it come in another color?"
    assert event.attachments == []
    assert event.member_meta == {"wa_id": "16505551234", "phone": "+16505551234", **BUSINESS}
    assert event.message_meta == {"type": "text"}


def test_image_with_url() -> None:
    event = one_message(raw("image_url"))
    assert_message(event, "wamid.xyzxyz", 1697043379)
    assert event.external_message_id == "wamid.xyzxyz"
    assert event.sender == TEST_NAME
    assert event.text == "[image]"
    assert event.attachments == [
        Attachment(
            kind="image",
            provider_ref="65463453",
            mime_type="image/jpeg",
            meta={
                "sha256": "4654+8g=",
                "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=65463453"
                "&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw",
            },
        )
    ]
    assert event.member_meta == TEST_NAME_META
    assert event.message_meta == {"type": "image"}


def test_document_forwarded() -> None:
    event = one_message(raw("document_forwarded"))
    assert_message(event, "wamid.xyzxyz", 1697043666)
    assert event.sender == TEST_NAME
    assert event.text == "caption"
    assert event.attachments == [
        Attachment(
            kind="document",
            provider_ref="1234567890987654321",
            mime_type="application/pdf",
            filename="filename.pdf",
            meta={"sha256": "grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY="},
        )
    ]
    assert event.message_meta == {"type": "document", "context": {"forwarded": True}}


def test_document_without_caption_names_the_file() -> None:
    doc = payload("document_forwarded")
    del message_of(doc)["document"]["caption"]
    assert one_message(doc).text == "[document: filename.pdf]"


def test_voice() -> None:
    event = one_message(raw("voice"))
    assert_message(event, "wamid.xyzxyz", 1697043473)
    assert event.text == "[voice message]"
    assert event.attachments == [
        Attachment(
            kind="voice",
            provider_ref="1234567890987654321",
            mime_type="audio/ogg; codecs=opus",
            meta={"sha256": "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI="},
        )
    ]
    assert event.message_meta == {"type": "audio"}


def test_audio_that_is_not_a_voice_note() -> None:
    doc = payload("voice")
    message_of(doc)["audio"]["voice"] = False
    event = one_message(doc)
    assert event.text == "[audio]"
    assert event.attachments[0].kind == "audio"


@pytest.mark.parametrize(
    ("kind", "obj", "text", "meta"),
    [
        ("video", {"id": "V", "mime_type": "video/mp4", "caption": "look"}, "look", {}),
        ("sticker", {"id": "S", "mime_type": "image/webp", "animated": True}, "[sticker]", None),
        ("image", {"id": "I", "caption": ""}, "[image]", {}),
        ("document", {"id": "D"}, "[document]", {}),
    ],
)
def test_media_kinds(kind: str, obj: dict[str, Any], text: str, meta: object) -> None:
    event = one_message(message_with(type=kind, **{kind: obj}))
    assert event.text == text
    [attachment] = event.attachments
    assert (attachment.kind, attachment.provider_ref) == (kind, obj["id"])
    assert attachment.mime_type == obj.get("mime_type")
    assert attachment.meta == ({"animated": True} if meta is None else meta)


def test_reply_context() -> None:
    event = one_message(raw("reply"))
    assert_message(event, "wamid.xyzxyz", 1697044746)
    assert event.text == "replied text"
    assert event.message_meta == {
        "type": "text",
        "context": {"from": "972123456789", "id": "wamid.xyzxyz=="},
    }


def test_location() -> None:
    event = one_message(raw("location"))
    assert_message(event, "wamid.xyzxyz", 1697044557)
    assert event.text == "Location: 12.25089, 43.90539"
    assert event.attachments == []
    assert event.message_meta == {
        "type": "location",
        "location": {"latitude": 12.25089, "longitude": 43.90539},
        "context": {"forwarded": True},
    }


def test_named_location() -> None:
    event = one_message(raw("location_named"))
    assert event.text == (
        "Location: 37.4611978, -122.2164385 (Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025)"
    )
    assert event.message_meta["location"] == {
        "latitude": 37.4611978,
        "longitude": -122.2164385,
        "name": "Facebook HQ",
        "address": "1 Hacker Way, Menlo Park, CA 94025",
        "url": "https://maps.google.com/?cid=2000000000000000000",
    }


def test_shared_contacts_are_not_the_sender() -> None:
    event = one_message(raw("contacts"))
    assert_message(event, "wamid.xyzxyz", 1697044621)
    assert event.sender == TEST_NAME
    assert event.member_meta == TEST_NAME_META
    assert event.text == "Contact: Chandler Bing, +1 555-555-5555\nContact: Monica, +1 666-666-6666"
    assert event.message_meta == {
        "type": "contacts",
        "contacts": [
            {
                "formatted_name": "Chandler Bing",
                "first_name": "Chandler",
                "last_name": "Bing",
                "name": "Chandler Bing",
                "phones": [
                    {
                        "phone": "+1 555-555-5555",
                        "wa_id": "972987654321",
                        "type": "CELL",
                        "phone_e164": "+15555555555",
                    }
                ],
            },
            {
                "formatted_name": "Monica",
                "first_name": "Monica",
                "name": "Monica",
                "phones": [
                    {
                        "phone": "+1 666-666-6666",
                        "wa_id": "972987654321",
                        "type": "HOME",
                        "phone_e164": "+16666666666",
                    }
                ],
            },
        ],
    }


def test_shared_contact_phone_uses_the_default_region() -> None:
    card = {"name": {"first_name": "Wundzen"}, "phones": [{"phone": "0815432345"}]}
    doc = message_with(type="contacts", contacts=[card])
    without = one_message(doc).message_meta["contacts"][0]["phones"]
    assert without == [{"phone": "0815432345"}]
    request = make_request(doc)
    event = WhatsAppAdapter(default_region="th").handle(request, make_ctx()).events[0]
    assert isinstance(event, MessageEvent)
    assert event.text == "Contact: Wundzen, 0815432345"
    assert event.message_meta["contacts"][0]["phones"] == [
        {"phone": "0815432345", "phone_e164": "+66815432345"}
    ]


def test_unknown_default_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phone region"):
        WhatsAppAdapter(default_region="XX")


def test_reaction_is_recorded() -> None:
    event = one_message(raw("reaction"))
    assert_message(event, "wamid.xyzxyz", 1697044456)
    assert event.text == "Reacted 😮"
    assert event.message_meta == {
        "type": "reaction",
        "reaction": {"message_id": "wamid.yzxyzx=", "emoji": "😮"},
    }


@pytest.mark.parametrize("reaction", [{"message_id": "wamid.yzxyzx=", "emoji": ""}, None])
def test_removed_reaction(reaction: dict[str, Any] | None) -> None:
    doc = payload("unreaction")
    if reaction is None:
        del message_of(doc)["reaction"]["emoji"]
    event = one_message(doc)
    assert event.text == "Removed reaction"
    assert event.message_meta["reaction"] == {"message_id": "wamid.yzxyzx=", "emoji": ""}


def test_unsupported_is_recorded_with_its_errors() -> None:
    event = one_message(raw("unsupported"))
    assert_message(event, "wamid.xyzxyz", 1697044706)
    assert event.text == "[unsupported message]"
    assert event.message_meta == {
        "type": "unsupported",
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "details": "Message type is currently not supported.",
            }
        ],
    }


@pytest.mark.parametrize("kind", ["order", "system", "request_welcome", "brand_new_type"])
def test_unknown_types_are_recorded(kind: str) -> None:
    event = one_message(message_with(type=kind, **{kind: {"whatever": 1}}))
    assert event.text == "[unsupported message]"
    assert event.message_meta == {"type": kind}


def test_value_level_errors_reach_the_message() -> None:
    # pywa `interactive_message_with_err`: the errors sit on the value, not the message.
    doc = message_with(type="interactive")
    value_of(doc)["errors"] = [{"code": 131000, "title": "Something went wrong"}]
    event = one_message(doc)
    assert event.text == "[unsupported message]"
    assert event.message_meta["errors"] == [{"code": 131000, "title": "Something went wrong"}]
    assert event.message_meta["content_errors"] == ["interactive: missing or malformed content"]


def test_edit() -> None:
    event = one_message(raw("edit"))
    edit_id = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
    assert_message(event, edit_id, 1749854575, kind="message.edited")
    assert event.external_message_id == (
        "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    )
    assert event.edited_at == ts(1749854575)
    assert event.sender.contact_value == "+16505551234"
    assert event.sender.first_name == "Test Name"
    assert event.text == "Updated image caption"
    assert event.attachments == [
        Attachment(
            kind="image",
            provider_ref="1234567890",
            mime_type="image/jpeg",
            meta={
                "sha256": "a1b2c3d4e5f6...",
                "url": "https://media.example.com/updated-image.jpg",
            },
        )
    ]
    assert event.message_meta == {
        "type": "edit",
        "wamid": edit_id,
        "content_type": "image",
        "context": {"id": "M0"},
    }


def test_edit_of_a_text() -> None:
    doc = payload("edit")
    message_of(doc)["edit"]["message"] = {"type": "text", "text": {"body": "fixed typo"}}
    event = one_message(doc)
    assert event.event_type == "message.edited"
    assert event.text == "fixed typo"
    assert event.message_meta["content_type"] == "text"


def test_revoke() -> None:
    event = one_message(raw("revoke"))
    assert_message(event, "wamid.revoke", 1697043223, kind="message.edited")
    assert event.external_message_id == "wamid.xyzxyz"
    assert event.edited_at == ts(1697043223)
    assert event.sender == TEST_NAME
    assert event.text == "[message deleted]"
    assert event.attachments == []
    assert event.message_meta == {"type": "revoke", "wamid": "wamid.revoke", "revoked": True}


@pytest.mark.parametrize("kind", ["edit", "revoke"])
@pytest.mark.parametrize("obj", [_MISSING, {}, {"original_message_id": ""}, {"original": 5}])
def test_edit_or_revoke_without_original_id_is_recorded(kind: str, obj: object) -> None:
    doc = message_with(type=kind)
    if obj is not _MISSING:
        message_of(doc)[kind] = obj
    event = one_message(doc)
    assert event.event_type == "message.received"
    assert event.external_message_id == "wamid.xyzxyz"
    assert event.text == "[unsupported message]"
    assert event.message_meta["content_errors"] == [f"{kind}: missing or malformed content"]


def test_button_reply() -> None:
    event = one_message(raw("button_reply"))
    assert_message(event, "wamid.xyzxyz", 1698266730)
    assert event.text == "title"
    assert event.message_meta == {
        "type": "interactive",
        "interactive": {"type": "button_reply", "id": "callback_data", "title": "title"},
        "context": {"from": "1122334455667", "id": "wamid.xyzxyz"},
    }


def test_list_reply() -> None:
    event = one_message(raw("list_reply"))
    assert event.text == "title"
    assert event.message_meta["interactive"] == {
        "type": "list_reply",
        "id": "callback_data",
        "title": "title",
        "description": "description",
    }


def test_flow_reply() -> None:
    event = one_message(raw("nfm_reply"))
    assert event.text == "Sent"
    meta = event.message_meta["interactive"]
    assert meta["type"] == "nfm_reply"
    assert meta["name"] == "flow"
    assert json.loads(meta["response_json"])["comment_text"] == "Comment Text"


def test_quick_reply_button() -> None:
    event = one_message(raw("quick_reply_button"))
    assert_message(event, "wamid.xsidjw", 1698269027)
    assert event.text == "title"
    assert event.message_meta == {
        "type": "button",
        "button": {"text": "title", "payload": "callback_data"},
        "context": {"from": "972123456789", "id": "wamid.xyzxyz=="},
    }


def test_referral_and_group_are_kept() -> None:
    referral = {"source_url": "AD_URL", "source_id": "ADID", "headline": "AD", "image_url": "x"}
    doc = message_with(type="text", text={"body": "hi"}, referral=referral, group_id="G1")
    meta = one_message(doc).message_meta
    assert meta["referral"] == {"source_url": "AD_URL", "source_id": "ADID", "headline": "AD"}
    assert meta["group_id"] == "G1"


# --- statuses ------------------------------------------------------------------------------------

CONVERSATION = {"id": "7270432eae37498234f4444b35ffc5", "origin": {"type": "service"}}
PRICING = {"billable": True, "pricing_model": "CBP", "category": "service"}


@pytest.mark.parametrize(
    ("name", "status", "timestamp", "extra"),
    [
        (
            "status_sent",
            "sent",
            1698266945,
            {
                "conversation": {**CONVERSATION, "expiration_timestamp": "1698339900"},
                "pricing": PRICING,
            },
        ),
        (
            "status_delivered",
            "delivered",
            1698266945,
            {"conversation": CONVERSATION, "pricing": PRICING},
        ),
        ("status_read", "read", 1689380458, {"conversation": CONVERSATION, "pricing": PRICING}),
        (
            "status_failed",
            "failed",
            1689380458,
            {
                "errors": [
                    {
                        "code": 130472,
                        "title": "User's number is part of an experiment",
                        "message": "User's number is part of an experiment",
                        "details": "Failed to send message because this user's phone number is "
                        "part of an experiment",
                        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                    }
                ]
            },
        ),
    ],
)
def test_statuses(name: str, status: str, timestamp: int, extra: dict[str, Any]) -> None:
    event = one_status(raw(name))
    assert event.event_type == "message.status"
    assert event.transport == "whatsapp"
    assert event.tenant_id == TENANT_ID
    assert event.channel_id == CHANNEL_ID
    assert event.received_at == RECEIVED_AT
    assert event.correlation_id == "corr-1"
    assert event.external_message_id == "wamid.xyzxyz"
    assert event.status == status
    assert event.status_at == ts(timestamp)
    assert event.event_id == make_event_id(
        CHANNEL_ID, "whatsapp", "wamid.xyzxyz", status, timestamp
    )
    assert event.conversation_key == f"{TENANT_ID}:whatsapp:+972987654321"
    assert event.meta == {"recipient_id": "972987654321", **extra, **BUSINESS}


def test_status_key_matches_the_conversation_of_its_recipient() -> None:
    message = one_message(raw("reply"))
    status = one_status(raw("status_read"))
    assert status.conversation_key == message.conversation_key


@pytest.mark.parametrize("kind", ["played", "deleted", "warning"])
def test_unknown_status_values_are_skipped(kind: str) -> None:
    doc = payload("status_read")
    value_of(doc)["statuses"].append({**value_of(doc)["statuses"][0], "status": kind})
    result = handle(doc)
    assert [e.status for e in result.events if isinstance(e, StatusEvent)] == ["read"]
    assert result.ignored == f"1 status(es) of unsupported kind ['{kind}']"
    value_of(doc)["statuses"].pop(0)
    result = handle(doc)
    assert result.events == []
    assert result.ignored == f"1 status(es) of unsupported kind ['{kind}']"


def test_status_for_a_bsuid_recipient() -> None:
    doc = payload("status_delivered")
    status = value_of(doc)["statuses"][0]
    del status["recipient_id"]
    status["recipient_user_id"] = "US.13491208655302741918"
    event = one_status(doc)
    assert event.conversation_key == f"{TENANT_ID}:whatsapp:US.13491208655302741918"
    assert event.meta["recipient_user_id"] == "US.13491208655302741918"


def test_odd_status_details_do_not_reject() -> None:
    doc = payload("status_failed")
    status = value_of(doc)["statuses"][0]
    status.update(errors="broken", conversation=[1], pricing={"billable": "yes", "category": 5})
    event = one_status(doc)
    assert event.meta == {"recipient_id": "972987654321", **BUSINESS}


# --- batches -------------------------------------------------------------------------------------


def test_batch_yields_every_event_in_order() -> None:
    result = handle(raw("batch"))
    summary = [
        (e.event_type, e.external_message_id, getattr(e, "status", None)) for e in result.events
    ]
    assert summary == [
        (
            "message.received",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
            None,
        ),
        ("message.received", "wamid.xyzxyz", None),
        ("message.received", "wamid.reaction1", None),
        ("message.status", "wamid.xyzxyz", "delivered"),
        ("message.status", "wamid.xyzxyz", "read"),
    ]
    assert result.ignored == (
        "changes of other fields ['account_update']; 1 status(es) of unsupported kind ['played']"
    )
    first, second = result.events[0], result.events[1]
    assert isinstance(first, MessageEvent)
    assert isinstance(second, MessageEvent)
    assert first.sender.first_name == "Sheena Nelson"
    assert second.sender.first_name == "Test Name"
    assert result.events[3].meta["waba_id"] == "102290129340399"  # type: ignore[union-attr]
    for event in result.events:
        assert decode_event(encode_event(event)) == event


def many_messages(n: int) -> dict[str, Any]:
    doc = payload("text_official")
    template = message_of(doc)
    value_of(doc)["messages"] = [
        {**template, "id": f"wamid.{i}", "text": {"body": f"message {i}"}} for i in range(n)
    ]
    return doc


def test_a_thousand_messages_in_one_body() -> None:
    result = handle(many_messages(MAX_UPDATES))
    assert len(result.events) == MAX_UPDATES
    assert [e.external_message_id for e in result.events] == [f"wamid.{i}" for i in range(1000)]
    assert len({e.event_id for e in result.events}) == MAX_UPDATES
    assert result.ignored is None


def test_more_than_a_thousand_updates_is_unprocessable() -> None:
    doc = many_messages(MAX_UPDATES)
    value_of(doc)["statuses"] = value_of(payload("status_read"))["statuses"]
    with pytest.raises(UnprocessablePayload, match="more than 1000 updates"):
        handle(doc)


@pytest.mark.parametrize(
    ("doc", "ignored"),
    [
        ({"object": "whatsapp_business_account", "entry": []}, "no messages or statuses"),
        (
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "account_update", "value": [1]}]}],
            },
            "changes of other fields ['account_update']",
        ),
        (
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "metadata": {"phone_number_id": PHONE_NUMBER_ID}}}]}],
            },
            "no messages or statuses",
        ),
    ],
)  # fmt: skip
def test_requests_without_events_say_why(doc: dict[str, Any], ignored: str) -> None:
    result = handle(doc)
    assert result.events == []
    assert result.ignored == ignored
    assert result.body == b'{"ok":true}'


# --- senders -------------------------------------------------------------------------------------


def test_bsuid_only_sender() -> None:
    doc = payload("reply")
    del message_of(doc)["from"]
    contact = {"profile": {"name": "Ann", "username": "@ann"}, "user_id": "US.1"}
    value_of(doc)["contacts"] = [contact]
    event = one_message(doc)
    assert event.sender == Sender(contact_type="whatsapp", contact_value="US.1", first_name="Ann")
    assert event.member_meta == {"user_id": "US.1", "username": "@ann", **BUSINESS}
    assert event.conversation_key == f"{TENANT_ID}:whatsapp:US.1"


def test_from_user_id_matches_its_contact() -> None:
    doc = payload("reply")
    del message_of(doc)["from"]
    message_of(doc)["from_user_id"] = "US.2"
    value_of(doc)["contacts"] = [
        {"profile": {"name": "Other"}, "user_id": "US.1"},
        {"profile": {"name": "Bob"}, "user_id": "US.2"},
    ]
    event = one_message(doc)
    assert (event.sender.contact_value, event.sender.first_name) == ("US.2", "Bob")


def test_sender_is_matched_by_wa_id_among_several_contacts() -> None:
    doc = payload("reply")
    value_of(doc)["contacts"] = [
        {"profile": {"name": "Somebody Else"}, "wa_id": "15550001111"},
        {"profile": {"name": "Right One"}, "wa_id": "972987654321"},
    ]
    assert one_message(doc).sender.first_name == "Right One"


def test_no_matching_contact_among_several_falls_back_to_the_number() -> None:
    doc = payload("reply")
    value_of(doc)["contacts"] = [
        {"profile": {"name": "A"}, "wa_id": "15550001111"},
        {"profile": {"name": "B"}, "wa_id": "15550002222"},
    ]
    event = one_message(doc)
    assert event.sender.first_name == "+972987654321"
    assert event.member_meta == {"wa_id": "972987654321", "phone": "+972987654321", **BUSINESS}


@pytest.mark.parametrize(
    ("contacts", "first_name"),
    [
        (_MISSING, "+972987654321"),
        ([], "+972987654321"),
        ("junk", "+972987654321"),
        ([{"profile": {"name": "  "}, "wa_id": "972987654321"}], "+972987654321"),
        ([{"profile": {"username": "@nick"}, "wa_id": "972987654321"}], "@nick"),
        ([{"profile": {"name": "x" * 300}, "wa_id": "972987654321"}], "x" * 255),
        ([{"profile": {"name": "Only One"}, "wa_id": "+972 98-765-4321"}], "Only One"),
        ([{"profile": "?", "wa_id": 5}], "+972987654321"),
    ],
)
def test_first_name_is_never_empty(contacts: object, first_name: str) -> None:
    doc = payload("reply")
    if contacts is _MISSING:
        del value_of(doc)["contacts"]
    else:
        value_of(doc)["contacts"] = contacts
    event = one_message(doc)
    assert event.sender.first_name == first_name
    assert event.sender.contact_value == "+972987654321"


def test_unparseable_from_is_kept_raw() -> None:
    doc = payload("reply")
    message_of(doc)["from"] = "<WHATSAPP_USER_PHONE_NUMBER>"
    value_of(doc)["contacts"][0]["wa_id"] = "<WHATSAPP_USER_PHONE_NUMBER>"
    event = one_message(doc)
    assert event.sender.contact_value == "<WHATSAPP_USER_PHONE_NUMBER>"
    assert event.sender.phone_e164 is None
    assert event.sender.first_name == "Test Name"
    assert "phone" not in event.member_meta


def test_message_without_any_sender_is_unprocessable() -> None:
    doc = payload("reply")
    del message_of(doc)["from"]
    del value_of(doc)["contacts"]
    with pytest.raises(UnprocessablePayload, match=r"entry\.0\.changes\.0\.value\.messages\.0"):
        handle(doc)


# --- lenient content -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image", [{}, {"id": ""}, {"id": 5}, {"id": None, "caption": "kept"}, "junk", None]
)
def test_odd_attachment_is_skipped_not_the_message(image: object) -> None:
    event = one_message(message_with(type="image", image=image))
    assert event.attachments == []
    assert event.text == ("kept" if isinstance(image, dict) and "caption" in image else "[image]")
    assert event.message_meta["attachment_errors"] == ["image: no media id"]


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"type": "text", "text": {"body": 5}}, "text"),
        ({"type": "text"}, "text"),
        ({"type": "location", "location": {"latitude": "1", "longitude": 2}}, "location"),
        ({"type": "location", "location": {"latitude": 1e400, "longitude": 2}}, "location"),
        ({"type": "contacts", "contacts": []}, "contacts"),
        ({"type": "interactive", "interactive": {"type": "button_reply"}}, "interactive"),
        ({"type": "button", "button": {"payload": "x"}}, "button"),
        ({"type": "reaction", "reaction": {"emoji": "x"}}, "reaction"),
    ],
)
def test_odd_content_is_recorded_as_unsupported(fields: dict[str, Any], kind: str) -> None:
    doc = message_with(**fields)
    body = json.dumps(doc).replace("1e+400", "1e400")
    event = one_message(body)
    assert event.text == "[unsupported message]"
    assert event.message_meta["content_errors"] == [f"{kind}: missing or malformed content"]


def test_odd_context_does_not_reject() -> None:
    meta = one_message(message_with(type="text", text={"body": "x"}, context=[1])).message_meta
    assert "context" not in meta


def test_timestamp_as_a_json_integer_is_accepted() -> None:
    doc = payload("reply")
    message_of(doc)["timestamp"] = 1697044746
    assert one_message(doc).version == 1697044746000


# --- authenticity --------------------------------------------------------------------------------


def test_missing_signature_is_unauthorized() -> None:
    with pytest.raises(Unauthorized) as info:
        handle(raw("text_official"), signature=_MISSING)
    assert info.value.status_code == 401
    assert info.value.reason == "missing X-Hub-Signature-256"


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "sha256=",
        "sha256=xyz",
        "sha1=" + "0" * 40,
        "0" * 64,
        "SHA256=" + "0" * 64,
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        " sha256=" + "0" * 64,
    ],
)
def test_malformed_signature_is_unauthorized(signature: str) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        handle(raw("text_official"), signature=signature)


def test_wrong_signature_is_unauthorized() -> None:
    body = raw("text_official")
    for signature in (sign(body, "another-secret"), "sha256=" + "0" * 64):
        with pytest.raises(Unauthorized, match="invalid signature"):
            handle(body, signature=signature)


def test_signature_of_another_body_is_unauthorized() -> None:
    body = raw("text_official")
    tampered = body.replace(b"another color", b"another colour")
    with pytest.raises(Unauthorized, match="invalid signature"):
        handle(tampered, signature=sign(body))


def test_upper_case_hex_is_accepted() -> None:
    body = raw("text_official")
    assert len(handle(body, signature=sign(body).upper().replace("SHA256=", "sha256=")).events)


def test_signature_is_checked_before_parsing() -> None:
    for body in (b"{not json", b"", b"[]"):
        with pytest.raises(Unauthorized):
            handle(body, signature="sha256=" + "0" * 64)
        with pytest.raises(Unauthorized):
            handle(body, signature="sha256=" + "0" * 64, content_type="text/plain")
        with pytest.raises(Unauthorized):
            handle(body, signature=_MISSING)


@pytest.mark.parametrize("config", [{}, {"app_secret": ""}, {"app_secret": None}])
def test_channel_without_app_secret_refuses_everything(config: dict[str, Any]) -> None:
    body = raw("text_official")
    for signature in (sign(body, ""), sign(body)):
        with pytest.raises(Unauthorized):
            handle(body, config=config, signature=signature)


# --- handshake -----------------------------------------------------------------------------------


def get(**query: str) -> RawRequest:
    pairs = tuple((f"hub.{k}", v) for k, v in query.items())
    return RawRequest(method="GET", url="https://x/webhooks/whatsapp/c", headers={}, query=pairs)


def test_handshake_returns_the_challenge() -> None:
    request = get(mode="subscribe", challenge="1158201444", verify_token=VERIFY_TOKEN)
    assert adapter.handshake(request, make_channel()) == "1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"mode": "subscribe", "challenge": "1", "verify_token": "wrong"},
        {"mode": "subscribe", "challenge": "1", "verify_token": VERIFY_TOKEN + " "},
        {"mode": "subscribe", "challenge": "1", "verify_token": ""},
        {"mode": "subscribe", "challenge": "1"},
        {"mode": "unsubscribe", "challenge": "1", "verify_token": VERIFY_TOKEN},
        {"challenge": "1", "verify_token": VERIFY_TOKEN},
        {"mode": "subscribe", "challenge": "", "verify_token": VERIFY_TOKEN},
        {"mode": "subscribe", "verify_token": VERIFY_TOKEN},
        {"mode": "subscribe", "challenge": "x" * 257, "verify_token": VERIFY_TOKEN},
        {"mode": "subscribe", "challenge": "<script>a b</script>", "verify_token": VERIFY_TOKEN},
    ],
)
def test_handshake_refusals_are_forbidden(query: dict[str, str]) -> None:
    with pytest.raises(Forbidden) as info:
        adapter.handshake(get(**query), make_channel())
    assert info.value.status_code == 403


@pytest.mark.parametrize("config", [{"app_secret": APP_SECRET}, {"verify_token": ""}])
def test_handshake_without_a_configured_token_is_forbidden(config: dict[str, Any]) -> None:
    request = get(mode="subscribe", challenge="1", verify_token="")
    with pytest.raises(Forbidden):
        adapter.handshake(request, make_channel(config))


def test_handshake_accepts_the_longest_challenge() -> None:
    request = get(mode="subscribe", challenge="9" * 256, verify_token=VERIFY_TOKEN)
    assert adapter.handshake(request, make_channel()) == "9" * 256


# --- phone number binding ------------------------------------------------------------------------

BOUND = {"verify_token": VERIFY_TOKEN, "app_secret": APP_SECRET, "phone_number_id": PHONE_NUMBER_ID}


def test_payload_for_the_bound_number_is_accepted() -> None:
    assert len(handle(raw("batch"), config=BOUND).events) == 5


def test_payload_for_another_phone_number_is_forbidden() -> None:
    doc = payload("batch")
    doc["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    with pytest.raises(Forbidden, match="payload for another phone number") as info:
        handle(doc, config=BOUND)
    assert info.value.status_code == 403
    assert len(handle(doc).events) == 5  # unbound channels take any number


# --- ids -----------------------------------------------------------------------------------------


def test_same_bytes_give_the_same_event_ids() -> None:
    first = [e.event_id for e in handle(raw("batch")).events]
    assert first == [e.event_id for e in handle(raw("batch")).events]
    assert len(set(first)) == len(first)


def test_event_id_depends_on_the_channel() -> None:
    other = Channel(
        id=uuid.uuid4(), tenant_id=TENANT_ID, transport="whatsapp", config=make_channel().config
    )
    event = adapter.handle(make_request(raw("reply")), make_ctx(other)).events[0]
    assert event.event_id != one_message(raw("reply")).event_id


def test_each_status_of_a_message_has_its_own_event_id() -> None:
    ids = {one_status(raw(n)).event_id for n in ("status_sent", "status_delivered", "status_read")}
    assert len(ids) == 3


def test_context_is_copied_into_the_events() -> None:
    ctx = make_ctx(correlation_id=None)
    for event in adapter.handle(make_request(raw("batch")), ctx).events:
        assert event.correlation_id is None
        assert event.received_at == RECEIVED_AT


@pytest.mark.parametrize("name", sorted(p.stem for p in (PAYLOADS / "whatsapp").glob("*.json")))
def test_every_payload_round_trips(name: str) -> None:
    result = handle(raw(name))
    assert result.events
    for event in result.events:
        assert decode_event(encode_event(event)) == event


# --- rejections ----------------------------------------------------------------------------------


def mutate(name: str, path: tuple[str | int, ...], value: object = _MISSING) -> dict[str, Any]:
    data = copy.deepcopy(payload(name))
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is _MISSING:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


CH = ("entry", 0, "changes", 0)
MSG = (*CH, "value", "messages", 0)
STATUS = (*CH, "value", "statuses", 0)
V = "entry.0.changes.0.value"
M = f"{V}.messages.0"
S = f"{V}.statuses.0"


@pytest.mark.parametrize(
    ("name", "path", "value", "reason"),
    [
        ("reply", ("object",), "page", "object: input should be 'whatsapp_business_account'"),
        ("reply", ("object",), _MISSING, "object: field required"),
        ("reply", ("entry",), {}, "entry: input should be a valid array"),
        ("reply", ("entry", 0, "id"), _MISSING, "entry.0.id: field required"),
        ("reply", ("entry", 0, "id"), 5, "entry.0.id: input should be a valid string"),
        ("reply", ("entry", 0, "changes"), {}, "entry.0.changes: input should be a valid array"),
        ("reply", CH, [], "entry.0.changes.0: input should be an object"),
        ("reply", (*CH, "field"), _MISSING, "entry.0.changes.0.field: field required"),
        ("reply", (*CH, "value"), _MISSING, f"{V}.metadata: field required"),
        ("reply", (*CH, "value"), None, f"{V}.metadata: field required"),
        ("reply", (*CH, "value"), [], f"{V}: input should be an object"),
        ("reply", (*CH, "value", "metadata"), _MISSING, f"{V}.metadata: field required"),
        (
            "reply",
            (*CH, "value", "metadata", "phone_number_id"),
            1,
            f"{V}.metadata.phone_number_id",
        ),
        ("reply", (*CH, "value", "messages"), {}, f"{V}.messages: input should be a valid array"),
        ("reply", (*MSG, "id"), _MISSING, f"{M}.id: field required"),
        ("reply", (*MSG, "id"), "", f"{M}.id: string should have at least 1"),
        ("reply", (*MSG, "id"), "w" * 513, f"{M}.id: string should have at most 512"),
        ("reply", (*MSG, "type"), _MISSING, f"{M}.type: field required"),
        ("reply", (*MSG, "timestamp"), _MISSING, f"{M}.timestamp: field required"),
        ("reply", (*MSG, "timestamp"), "soon", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), "-1", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), "99999999999999", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), 1.5, f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), True, f"{M}.timestamp: value error"),
        ("reply", (*MSG, "from"), 972987654321, f"{M}.from: input should be a valid string"),
        ("status_read", (*STATUS, "id"), _MISSING, f"{S}.id: field required"),
        ("status_read", (*STATUS, "status"), _MISSING, f"{S}.status: field required"),
        ("status_read", (*STATUS, "timestamp"), "", f"{S}.timestamp: value error"),
        ("status_read", (*STATUS, "recipient_id"), 5, f"{S}.recipient_id: input should be"),
    ],
)
def test_structurally_wrong_payload_is_unprocessable(
    name: str, path: tuple[str | int, ...], value: object, reason: str
) -> None:
    with pytest.raises(UnprocessablePayload) as info:
        handle(mutate(name, path, value))
    assert info.value.status_code == 422
    assert info.value.reason.startswith(reason), info.value.reason
    assert len(info.value.reason) <= 200


def test_deep_nesting_is_rejected() -> None:
    with pytest.raises(BadPayload):
        handle(
            b'{"object": "whatsapp_business_account", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        )


# --- channel_config ------------------------------------------------------------------------------


def test_channel_config_generates_a_verify_token() -> None:
    first = adapter.channel_config({"app_secret": APP_SECRET})
    second = adapter.channel_config({"app_secret": APP_SECRET})
    assert set(first) == {"verify_token", "app_secret"}
    assert first["app_secret"] == APP_SECRET
    assert first["verify_token"] != second["verify_token"]
    assert adapter.channel_config(first) == first  # a generated token is itself valid


def test_channel_config_keeps_given_values() -> None:
    given = {"verify_token": "my-token!", "app_secret": APP_SECRET, "phone_number_id": "1065403"}
    assert adapter.channel_config(given) == given


@pytest.mark.parametrize("given", [{}, {"app_secret": ""}, {"verify_token": "abc"}])
def test_channel_config_requires_the_app_secret(given: dict[str, str]) -> None:
    with pytest.raises(ChannelConfigError, match="app_secret is required"):
        adapter.channel_config(given)


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"app_secret": "has space"}, "app_secret"),
        ({"app_secret": APP_SECRET, "verify_token": ""}, "verify_token"),
        ({"app_secret": APP_SECRET, "verify_token": "x" * 257}, "verify_token"),
        ({"app_secret": APP_SECRET, "verify_token": "ümlaut"}, "verify_token"),
        ({"app_secret": APP_SECRET, "phone_number_id": "+1065"}, "phone_number_id"),
        ({"app_secret": APP_SECRET, "phone_number_id": ""}, "phone_number_id"),
        ({"app_secret": APP_SECRET, "phone_number_id": "١٢٣"}, "phone_number_id"),
        ({"app_secret": APP_SECRET, "access_token": "x"}, "unknown config key for whatsapp"),
    ],
)
def test_channel_config_rejects_invalid_values(given: dict[str, str], match: str) -> None:
    with pytest.raises(ChannelConfigError, match=match):
        adapter.channel_config(given)


def test_transport_name() -> None:
    assert WhatsAppAdapter.transport == "whatsapp"
