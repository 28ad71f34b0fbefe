"""WhatsAppAdapter: the real payloads of providers.md §2, signatures, handshake, ids, rejections.

What every JSON webhook shares (authentication before parsing, malformed bodies, ids per
channel, the context copied into events) is in test_json_webhooks.py, and channel_config in
test_channel_config.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.errors import ChannelMismatch, Forbidden, Unauthorized, UnprocessablePayload
from ingest.events import Attachment, MessageEvent, Sender, StatusEvent, decode_event, encode_event
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.whatsapp import MAX_UPDATES, SIGNATURE_HEADER, WhatsAppAdapter
from tests.unit.adapters import (
    TENANT_ID,
    assert_envelope,
    captured,
    channel,
    context,
    only_event,
    post,
    ts,
)
from tests.unit.json_docs import MISSING, JsonBody, json_bytes, mutated

CHANNEL_ID = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "verify-me"
PHONE_NUMBER_ID = "106540352242922"
_SIGN: Any = object()  # sign the body with APP_SECRET

adapter = WhatsAppAdapter()


def make_channel(config: dict[str, Any] | None = None) -> Channel:
    cfg = {"verify_token": VERIFY_TOKEN, "app_secret": APP_SECRET} if config is None else config
    return channel("whatsapp", CHANNEL_ID, cfg)


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def make_request(
    body: JsonBody, signature: str | None = _SIGN, content_type: str | None = "application/json"
) -> RawRequest:
    """A WhatsApp POST signed with APP_SECRET; a given `signature` replaces it (None: unsigned)."""
    data = json_bytes(body)
    signed = sign(data) if signature is _SIGN else signature
    headers = {"content-type": content_type, SIGNATURE_HEADER.lower(): signed}
    return post("https://x/webhooks/whatsapp/c", data, headers)


def raw(name: str) -> bytes:
    return captured("whatsapp", f"{name}.json")


def payload(name: str) -> dict[str, Any]:
    return json.loads(raw(name))


def handle(
    body: JsonBody,
    config: dict[str, Any] | None = None,
    *,
    ctx: ParseContext | None = None,
    **kwargs: Any,
) -> WebhookResult:
    return adapter.handle(make_request(body, **kwargs), ctx or context(make_channel(config)))


def one_message(body: JsonBody) -> MessageEvent:
    return only_event(handle(body), MessageEvent)


def one_status(body: JsonBody) -> StatusEvent:
    return only_event(handle(body), StatusEvent)


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


def reply_with_contacts(contacts: object) -> dict[str, Any]:
    """The pywa text message of +972987654321 with other `contacts` (MISSING: none at all)."""
    doc = payload("reply")
    if contacts is MISSING:
        del value_of(doc)["contacts"]
    else:
        value_of(doc)["contacts"] = contacts
    return doc


def contact(name: str, wa_id: str) -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


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
    user_id="US.13491208655302741918",
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
    version = timestamp * 1000
    assert_envelope(event, "whatsapp", CHANNEL_ID, wamid, kind, version)
    assert (event.event_type, event.version, event.sent_at) == (kind, version, ts(timestamp))


def assert_unsupported(event: MessageEvent, kind: str) -> None:
    """Content that cannot be read costs only itself: a placeholder text and the reason."""
    assert event.text == "[unsupported message]"
    assert event.message_meta["content_errors"] == [f"{kind}: missing or malformed content"]


def media(
    kind: str, media_id: str, mime_type: str, sha256: str, url: str | None = None, **fields: Any
) -> Attachment:
    """An attachment as the Cloud API describes it: a media id, its type and its checksum."""
    meta = {"sha256": sha256} if url is None else {"sha256": sha256, "url": url}
    return Attachment(kind=kind, provider_ref=media_id, mime_type=mime_type, meta=meta, **fields)


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


SHARED_CONTACTS = "Contact: Chandler Bing, +1 555-555-5555\nContact: Monica, +1 666-666-6666"
# The pywa captures of Test Name's messages: (wamid, timestamp, text).
PYWA_MESSAGES = {
    "image_url": ("wamid.xyzxyz", 1697043379, "[image]"),
    "document_forwarded": ("wamid.xyzxyz", 1697043666, "caption"),
    "voice": ("wamid.xyzxyz", 1697043473, "[voice message]"),
    "reply": ("wamid.xyzxyz", 1697044746, "replied text"),
    "location": ("wamid.xyzxyz", 1697044557, "Location: 12.25089, 43.90539"),
    "contacts": ("wamid.xyzxyz", 1697044621, SHARED_CONTACTS),  # content, not the sender
    "reaction": ("wamid.xyzxyz", 1697044456, "Reacted 😮"),
    "unsupported": ("wamid.xyzxyz", 1697044706, "[unsupported message]"),
    "button_reply": ("wamid.xyzxyz", 1698266730, "title"),
    "quick_reply_button": ("wamid.xsidjw", 1698269027, "title"),
}
FORWARDED = {"forwarded": True}
SHARED_CARDS = [
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
]
UNKNOWN_TYPE_ERROR = {
    "code": 131051,
    "title": "Message type unknown",
    "message": "Message type unknown",
    "details": "Message type is currently not supported.",
}
PYWA_MESSAGE_META = {
    "image_url": {"type": "image"},
    "document_forwarded": {"type": "document", "context": FORWARDED},
    "voice": {"type": "audio"},
    "reply": {"type": "text", "context": {"from": "972123456789", "id": "wamid.xyzxyz=="}},
    "location": {
        "type": "location",
        "location": {"latitude": 12.25089, "longitude": 43.90539},
        "context": FORWARDED,
    },
    "contacts": {"type": "contacts", "contacts": SHARED_CARDS},
    "reaction": {"type": "reaction", "reaction": {"message_id": "wamid.yzxyzx=", "emoji": "😮"}},
    "unsupported": {"type": "unsupported", "errors": [UNKNOWN_TYPE_ERROR]},
    "button_reply": {
        "type": "interactive",
        "interactive": {"type": "button_reply", "id": "callback_data", "title": "title"},
        "context": {"from": "1122334455667", "id": "wamid.xyzxyz"},
    },
    "quick_reply_button": {
        "type": "button",
        "button": {"text": "title", "payload": "callback_data"},
        "context": {"from": "972123456789", "id": "wamid.xyzxyz=="},
    },
}
MEDIA_ID = "1234567890987654321"
IMAGE_URL = (
    "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=65463453"
    "&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw"
)
PDF_SHA256 = "grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY="
OGG_SHA256 = "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI="
# The attachment of each captured media message (the others have none).
PYWA_ATTACHMENTS = {
    "image_url": media("image", "65463453", "image/jpeg", "4654+8g=", url=IMAGE_URL),
    "document_forwarded": media(
        "document", MEDIA_ID, "application/pdf", PDF_SHA256, filename="filename.pdf"
    ),
    "voice": media("voice", MEDIA_ID, "audio/ogg; codecs=opus", OGG_SHA256),
}


@pytest.mark.parametrize("name", sorted(PYWA_MESSAGES))
def test_captured_message(name: str) -> None:
    wamid, timestamp, text = PYWA_MESSAGES[name]
    event = one_message(raw(name))
    assert_message(event, wamid, timestamp)
    assert (event.external_message_id, event.edited_at) == (wamid, None)
    assert (event.sender, event.member_meta) == (TEST_NAME, TEST_NAME_META)
    assert (event.text, event.message_meta) == (text, PYWA_MESSAGE_META[name])
    expected = PYWA_ATTACHMENTS.get(name)
    assert event.attachments == ([] if expected is None else [expected])


def test_document_without_caption_names_the_file() -> None:
    doc = payload("document_forwarded")
    del message_of(doc)["document"]["caption"]
    assert one_message(doc).text == "[document: filename.pdf]"


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


def test_shared_contact_phone_uses_the_default_region() -> None:
    card = {"name": {"first_name": "Wundzen"}, "phones": [{"phone": "0815432345"}]}
    doc = message_with(type="contacts", contacts=[card])
    without = one_message(doc).message_meta["contacts"][0]["phones"]
    assert without == [{"phone": "0815432345"}]
    request = make_request(doc)
    event = WhatsAppAdapter(default_region="th").handle(request, context(make_channel())).events[0]
    assert isinstance(event, MessageEvent)
    assert event.text == "Contact: Wundzen, 0815432345"
    assert event.message_meta["contacts"][0]["phones"] == [
        {"phone": "0815432345", "phone_e164": "+66815432345"}
    ]


def test_unknown_default_region_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown phone region"):
        WhatsAppAdapter(default_region="XX")


@pytest.mark.parametrize("reaction", [{"message_id": "wamid.yzxyzx=", "emoji": ""}, None])
def test_removed_reaction(reaction: dict[str, Any] | None) -> None:
    doc = payload("unreaction")
    if reaction is None:
        del message_of(doc)["reaction"]["emoji"]
    event = one_message(doc)
    assert event.text == "Removed reaction"
    assert event.message_meta["reaction"] == {"message_id": "wamid.yzxyzx=", "emoji": ""}


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
    assert_unsupported(event, "interactive")
    assert event.message_meta["errors"] == [{"code": 131000, "title": "Something went wrong"}]


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
    updated = "https://media.example.com/updated-image.jpg"
    assert event.attachments == [
        media("image", "1234567890", "image/jpeg", "a1b2c3d4e5f6...", url=updated)
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
@pytest.mark.parametrize("obj", [MISSING, {}, {"original_message_id": ""}, {"original": 5}])
def test_edit_or_revoke_without_original_id_is_recorded(kind: str, obj: object) -> None:
    doc = message_with(type=kind)
    if obj is not MISSING:
        message_of(doc)[kind] = obj
    event = one_message(doc)
    assert event.event_type == "message.received"
    assert event.external_message_id == "wamid.xyzxyz"
    assert_unsupported(event, kind)


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


def test_referral_and_group_are_kept() -> None:
    referral = {"source_url": "AD_URL", "source_id": "ADID", "headline": "AD", "image_url": "x"}
    doc = message_with(type="text", text={"body": "hi"}, referral=referral, group_id="G1")
    meta = one_message(doc).message_meta
    assert meta["referral"] == {"source_url": "AD_URL", "source_id": "ADID", "headline": "AD"}
    assert meta["group_id"] == "G1"


# --- statuses ------------------------------------------------------------------------------------

CONVERSATION = {"id": "7270432eae37498234f4444b35ffc5", "origin": {"type": "service"}}
PRICING = {"billable": True, "pricing_model": "CBP", "category": "service"}
BILLED = {"conversation": CONVERSATION, "pricing": PRICING}
FIRST_BILLED = {**BILLED, "conversation": {**CONVERSATION, "expiration_timestamp": "1698339900"}}
EXPERIMENT_ERROR = {
    "code": 130472,
    "title": "User's number is part of an experiment",
    "message": "User's number is part of an experiment",
    "details": "Failed to send message because this user's phone number is part of an experiment",
    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
}


@pytest.mark.parametrize(
    ("name", "status", "timestamp", "extra"),
    [
        ("status_sent", "sent", 1698266945, FIRST_BILLED),
        ("status_delivered", "delivered", 1698266945, BILLED),
        ("status_read", "read", 1689380458, BILLED),
        ("status_failed", "failed", 1689380458, {"errors": [EXPERIMENT_ERROR]}),
    ],
)
def test_statuses(name: str, status: str, timestamp: int, extra: dict[str, Any]) -> None:
    event = one_status(raw(name))
    ids = ("wamid.xyzxyz", status, timestamp)
    assert_envelope(event, "whatsapp", CHANNEL_ID, *ids, identity="+972987654321")
    assert event.event_type == "message.status"
    assert event.external_message_id == "wamid.xyzxyz"
    assert (event.status, event.status_at) == (status, ts(timestamp))
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
    ann = {"profile": {"name": "Ann", "username": "@ann"}, "user_id": "US.1"}
    value_of(doc)["contacts"] = [ann]
    event = one_message(doc)
    assert event.sender == Sender(
        contact_type="whatsapp", contact_value="US.1", first_name="Ann", user_id="US.1"
    )
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
    doc = reply_with_contacts(
        [contact("Somebody Else", "15550001111"), contact("Right One", "972987654321")]
    )
    assert one_message(doc).sender.first_name == "Right One"


def test_no_matching_contact_among_several_falls_back_to_the_number() -> None:
    event = one_message(
        reply_with_contacts([contact("A", "15550001111"), contact("B", "15550002222")])
    )
    assert event.sender.first_name == "+972987654321"
    assert event.member_meta == {"wa_id": "972987654321", "phone": "+972987654321", **BUSINESS}


@pytest.mark.parametrize(
    ("contacts", "first_name"),
    [
        (MISSING, "+972987654321"),
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
    event = one_message(reply_with_contacts(contacts))
    assert event.sender.first_name == first_name
    # Only a profile name counts as a name; a later one replaces a number or a username.
    assert event.sender.name_is_placeholder == (first_name in ("+972987654321", "@nick"))
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


def test_message_without_any_sender_is_kept_as_an_element() -> None:
    doc = payload("reply")
    del message_of(doc)["from"]
    del value_of(doc)["contacts"]
    result = handle(doc)
    assert result.events == []
    [kept] = result.kept
    assert kept.element == "entry.0.changes.0.value.messages.0"
    assert kept.reason_kind == "no_sender"
    assert kept.reason == f"{kept.element}: message names no sender (from / user_id)"


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
    assert_unsupported(one_message(body), kind)


def test_odd_context_does_not_reject() -> None:
    meta = one_message(message_with(type="text", text={"body": "x"}, context=[1])).message_meta
    assert "context" not in meta


def test_timestamp_as_a_json_integer_is_accepted() -> None:
    doc = payload("reply")
    message_of(doc)["timestamp"] = 1697044746
    assert one_message(doc).version == 1697044746000


# --- authenticity --------------------------------------------------------------------------------


# (A missing signature, and the signature checked first: test_json_webhooks.py.)


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


@pytest.mark.parametrize("challenge", ["1158201444", "9" * 256])  # the longest accepted
def test_handshake_returns_the_challenge(challenge: str) -> None:
    request = get(mode="subscribe", challenge=challenge, verify_token=VERIFY_TOKEN)
    assert adapter.handshake(request, make_channel()) == challenge


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


# --- phone number binding ------------------------------------------------------------------------

BOUND = {"verify_token": VERIFY_TOKEN, "app_secret": APP_SECRET, "phone_number_id": PHONE_NUMBER_ID}


def test_payload_for_the_bound_number_is_accepted() -> None:
    assert len(handle(raw("batch"), config=BOUND).events) == 5


def test_payload_for_another_phone_number_is_a_channel_mismatch() -> None:
    # Signed with the app's secret, so genuine: kept whole (gateway) for a replay once the
    # channel's phone_number_id is fixed, never published into this channel.
    doc = payload("batch")
    doc["entry"][1]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    with pytest.raises(ChannelMismatch, match="payload for another phone number") as info:
        handle(doc, config=BOUND)
    assert info.value.reason_kind == "channel_mismatch"
    assert len(handle(doc).events) == 5  # unbound channels take any number


# --- ids -----------------------------------------------------------------------------------------


def test_same_bytes_give_the_same_event_ids() -> None:
    first = [e.event_id for e in handle(raw("batch")).events]
    assert first == [e.event_id for e in handle(raw("batch")).events]
    assert len(set(first)) == len(first)


def test_each_status_of_a_message_has_its_own_event_id() -> None:
    ids = {one_status(raw(n)).event_id for n in ("status_sent", "status_delivered", "status_read")}
    assert len(ids) == 3


# --- rejections ----------------------------------------------------------------------------------


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
        ("reply", ("object",), MISSING, "object: field required"),
        ("reply", ("entry",), {}, "entry: input should be a valid array"),
        ("reply", ("entry", 0, "id"), MISSING, "entry.0.id: field required"),
        ("reply", ("entry", 0, "id"), 5, "entry.0.id: input should be a valid string"),
        ("reply", ("entry", 0, "changes"), {}, "entry.0.changes: input should be a valid array"),
        ("reply", CH, [], "entry.0.changes.0: input should be an object"),
        ("reply", (*CH, "field"), MISSING, "entry.0.changes.0.field: field required"),
        ("reply", (*CH, "value"), MISSING, f"{V}.metadata: field required"),
        ("reply", (*CH, "value"), None, f"{V}.metadata: field required"),
        ("reply", (*CH, "value"), [], f"{V}: input should be an object"),
        ("reply", (*CH, "value", "metadata"), MISSING, f"{V}.metadata: field required"),
        (
            "reply",
            (*CH, "value", "metadata", "phone_number_id"),
            1,
            f"{V}.metadata.phone_number_id",
        ),
        ("reply", (*CH, "value", "messages"), {}, f"{V}.messages: input should be a valid array"),
        ("reply", (*MSG, "id"), MISSING, f"{M}.id: field required"),
        ("reply", (*MSG, "id"), "", f"{M}.id: string should have at least 1"),
        ("reply", (*MSG, "id"), "w" * 513, f"{M}.id: string should have at most 512"),
        ("reply", (*MSG, "type"), MISSING, f"{M}.type: field required"),
        ("reply", (*MSG, "timestamp"), MISSING, f"{M}.timestamp: field required"),
        ("reply", (*MSG, "timestamp"), "soon", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), "-1", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), "99999999999999", f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), 1.5, f"{M}.timestamp: value error"),
        ("reply", (*MSG, "timestamp"), True, f"{M}.timestamp: value error"),
        ("reply", (*MSG, "from"), 972987654321, f"{M}.from: input should be a valid string"),
        ("status_read", (*STATUS, "id"), MISSING, f"{S}.id: field required"),
        ("status_read", (*STATUS, "status"), MISSING, f"{S}.status: field required"),
        ("status_read", (*STATUS, "timestamp"), "", f"{S}.timestamp: value error"),
        ("status_read", (*STATUS, "recipient_id"), 5, f"{S}.recipient_id: input should be"),
    ],
)
def test_structurally_wrong_payload_is_unprocessable(
    name: str, path: tuple[str | int, ...], value: object, reason: str
) -> None:
    doc = mutated(payload(name), path, value)
    if reason.startswith((M, S)):
        # One element of the batch: kept on its own, as a one-element request of its entry.
        result = handle(doc)
        assert result.events == []
        [kept] = result.kept
        assert kept.element == reason.split(":")[0].rsplit(".", 1)[0]
        assert kept.reason.startswith(reason), kept.reason
        assert kept.reason_kind == "unprocessable"
        alone = json.loads(kept.body)
        assert alone["entry"][0]["changes"][0]["value"]["metadata"] == value_of(doc)["metadata"]
        key = "messages" if reason.startswith(M) else "statuses"
        assert alone["entry"][0]["changes"][0]["value"][key] == [value_of(doc)[key][0]]
        return
    with pytest.raises(UnprocessablePayload) as info:
        handle(doc)
    assert info.value.status_code == 422
    assert info.value.reason.startswith(reason), info.value.reason
    assert len(info.value.reason) <= 200
