"""TelegramAdapter: the real payloads of providers.md §1, authenticity, ids and rejections.

What every JSON webhook shares (authentication before parsing, malformed bodies, ids per
channel, the context copied into events) is in test_json_webhooks.py, and channel_config in
test_channel_config.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest

from ingest.errors import BadPayload, Unauthorized, UnprocessablePayload
from ingest.events import Attachment, MessageEvent, Sender, decode_event, encode_event
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.telegram import SECRET_HEADER, TelegramAdapter
from tests.unit.adapters import assert_envelope, captured, channel, context, only_event, post, ts
from tests.unit.json_docs import MISSING, JsonBody, json_bytes, mutated

CHANNEL_ID = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
SECRET = "s3cr3t-token"

adapter = TelegramAdapter()


def make_channel(config: dict[str, Any] | None = None) -> Channel:
    return channel("telegram", CHANNEL_ID, {"secret_token": SECRET} if config is None else config)


def make_request(
    body: JsonBody, secret: str | None = SECRET, content_type: str | None = "application/json"
) -> RawRequest:
    """A Telegram POST; `secret` (or the content type) None leaves that header out."""
    headers = {"content-type": content_type, SECRET_HEADER.lower(): secret}
    return post("https://x/webhooks/telegram/c", json_bytes(body), headers)


def raw(name: str) -> bytes:
    return captured("telegram", f"{name}.json")


def payload(name: str) -> dict[str, Any]:
    return json.loads(raw(name))


def handle(body: JsonBody, *, ctx: ParseContext | None = None, **kwargs: Any) -> WebhookResult:
    return adapter.handle(make_request(body, **kwargs), ctx or context(make_channel()))


def one_event(body: JsonBody) -> MessageEvent:
    return only_event(handle(body), MessageEvent)


class Member(NamedTuple):
    """Who sent a captured message, and the member_meta kept about them."""

    sender: Sender
    meta: dict[str, Any]


TEST_USER = Member(
    Sender(
        contact_type="telegram",
        contact_value="1111111",
        first_name="Test Firstname",
        last_name="Test Lastname",
    ),
    {"chat_id": 1111111, "user_id": 1111111, "username": "Testusername", "chat_type": "private"},
)
IRINA = Member(
    Sender(
        contact_type="telegram", contact_value="86815320", first_name="Ирина", last_name="Киселёва"
    ),
    {
        "chat_id": 86815320,
        "user_id": 86815320,
        "username": "Irina_V_Kiseleva",
        "language_code": "en",
        "chat_type": "private",
    },
)
WORAKORN = Member(
    Sender(
        contact_type="telegram", contact_value="527317977", first_name="Worakorn", last_name="CXA"
    ),
    {
        "chat_id": -1001319789908,
        "user_id": 527317977,
        "username": "WorakornX",
        "language_code": "en-TH",
        "chat_type": "supergroup",
        "chat_title": "CXABottesting",
    },
)


def assert_common(event: MessageEvent, chat_id: int, message_id: int, edit_date: int = 0) -> None:
    assert_envelope(event, "telegram", CHANNEL_ID, chat_id, message_id, edit_date)
    assert event.external_message_id == f"{chat_id}:{message_id}"


def attachment(kind: str, file_id: str, mime_type: str, size: int, **fields: Any) -> Attachment:
    """An attachment as the captures carry it: the provider_ref is Telegram's file_id."""
    return Attachment(
        kind=kind, provider_ref=file_id, mime_type=mime_type, size_bytes=size, **fields
    )


# --- the payloads of providers.md §1, field by field ---------------------------------------------

# Where, when and by whom each captured message was sent: (chat id, message id, date, member).
SENT = {
    "text_official": (1111111, 1365, 1441645532, TEST_USER),
    "text_real_cyrillic": (86815320, 8, 1680378147, IRINA),
    "photo": (86815320, 4, 1680376451, IRINA),
    "document": (1111111, 1365, 1441645532, TEST_USER),
    "voice": (1111111, 1365, 1441645532, TEST_USER),
    "location": (-1001319789908, 217, 1529561866, WORAKORN),
    "contact": (-1001319789908, 221, 1529561907, WORAKORN),
}
LOCATION = {"latitude": 13.674550, "longitude": 100.534625}
CONTACT = {"phone_number": "0815432345", "first_name": "Wundzen 💎"}
# What each captured message says: (text, message_meta).
SAYS = {
    "text_official": ("/start", {"update_id": 10000}),
    "text_real_cyrillic": ("just text", {"update_id": 494890303}),
    "photo": ("[photo]", {"update_id": 494890299, "media_group_id": "13443011608618786"}),
    "document": ("[document: Testfile.pdf]", {"update_id": 10000}),
    "voice": ("[voice message]", {"update_id": 10000}),
    "location": ("Location: 13.67455, 100.534625", {"update_id": 271683424, "location": LOCATION}),
    "contact": ("Contact: Wundzen 💎, 0815432345", {"update_id": 271683426, "contact": CONTACT}),
}
PHOTO_ID = "AgACAgIAAxkBAAMEZCiCg7A1qAABECDXqbjnqtId777bAAIFyDEbLKhISVFwzRK8kZMNAQADAgADeQADLwQ"
FILE_ID = "AwADBAADbXXXXXXXXXXXGBdhD2l6_XX"
LARGEST = {"file_unique_id": "AQADBcgxGyyoSEl-", "width": 721, "height": 1280}
# The attachment of each captured media message (the others have none); of a photo's sizes,
# only the largest is kept.
ATTACHMENTS = {
    "photo": attachment("photo", PHOTO_ID, "image/jpeg", 132533, meta=LARGEST),
    "document": attachment("document", FILE_ID, "application/pdf", 536392, filename="Testfile.pdf"),
    "voice": attachment("voice", FILE_ID, "audio/ogg", 23000, meta={"duration": 5}),
}


@pytest.mark.parametrize("name", sorted(SENT))
def test_captured_message(name: str) -> None:
    chat_id, message_id, date, member = SENT[name]
    text, message_meta = SAYS[name]
    event = one_event(raw(name))
    assert_common(event, chat_id, message_id)
    assert event.event_type == "message.received"
    assert (event.sent_at, event.edited_at, event.version) == (ts(date), None, date * 1000)
    assert (event.sender, event.member_meta) == member
    assert (event.text, event.message_meta) == (text, message_meta)
    assert event.attachments == ([ATTACHMENTS[name]] if name in ATTACHMENTS else [])


def test_dates_are_utc() -> None:
    assert one_event(raw("text_official")).sent_at == datetime(2015, 9, 7, 17, 5, 32, tzinfo=UTC)


def test_photo_largest_is_chosen_by_area_not_position() -> None:
    data = payload("photo")
    data["message"]["photo"].reverse()
    data["message"]["caption"] = "a cat"
    event = one_event(data)
    assert event.text == "a cat"
    assert event.attachments[0].meta["width"] == 721


def test_edited_message() -> None:
    event = one_event(raw("edited_message"))
    assert_common(event, 1111111, 1365, edit_date=1441646600)
    assert event.event_type == "message.edited"
    assert (event.sender, event.member_meta) == TEST_USER
    assert event.text == "Edited text"
    assert (event.sent_at, event.edited_at) == (ts(1441645532), ts(1441646600))
    assert event.version == 1441646600000


def test_callback_query_is_ignored() -> None:
    result = handle(raw("callback_query"))
    assert result.events == []
    assert result.ignored == "unsupported update type: callback_query"
    assert result.body == b'{"ok":true}'
    assert result.media_type == "application/json"


def test_channel_post_keeps_negative_64bit_ids() -> None:
    event = one_event(raw("channel_post"))
    assert_common(event, -1001961815317, 29)
    assert event.event_type == "message.received"
    assert event.sender == Sender(
        contact_type="telegram", contact_value="-1001961815317", first_name="testChannel"
    )
    assert event.external_message_id == "-1001961815317:29"
    assert event.text == "12"
    assert event.sent_at == ts(1680549050)
    assert event.member_meta == {
        "chat_id": -1001961815317,
        "user_id": -1001961815317,
        "username": None,
        "chat_type": "channel",
        "chat_title": "testChannel",
    }
    assert isinstance(event.member_meta["chat_id"], int)
    again = decode_event(encode_event(event))
    assert again.member_meta["chat_id"] == -1001961815317
    assert event.message_meta == {"update_id": 115121083}


def test_edited_channel_post() -> None:
    data = payload("channel_post")
    channel_post = data.pop("channel_post")
    data["edited_channel_post"] = {**channel_post, "text": "13", "edit_date": 1680549100}
    event = one_event(data)
    assert event.event_type == "message.edited"
    assert event.sender.contact_value == "-1001961815317"
    assert event.edited_at == ts(1680549100)
    assert event.version == 1680549100000


# --- other message shapes -----------------------------------------------------------------------


def message_with(**fields: Any) -> dict[str, Any]:
    data = payload("text_official")
    del data["message"]["text"]
    data["message"].update(fields)
    return data


def test_venue_rendering_wins_over_its_location() -> None:
    loc = {"latitude": 52.5, "longitude": 13.4, "horizontal_accuracy": 12.5}
    venue = {"location": loc, "title": "Café", "address": "Main St 1", "foursquare_id": "4b"}
    event = one_event(message_with(location=loc, venue=venue))
    assert event.text == "Venue: Café, Main St 1"
    assert event.message_meta["venue"] == venue
    assert event.message_meta["location"] == loc


@pytest.mark.parametrize(
    ("kind", "obj", "text", "meta"),
    [
        ("video", {"file_id": "V", "duration": 3, "width": 4, "height": 5}, "[video]", None),
        (
            "video_note",
            {"file_id": "N", "file_unique_id": "u", "length": 9},
            "[video message]",
            None,
        ),
        ("sticker", {"file_id": "S", "emoji": "😀", "width": 512}, "[sticker]", None),
        (
            "audio",
            {"file_id": "A", "file_name": "song.mp3", "title": "T"},
            "[audio: song.mp3]",
            None,
        ),
        ("audio", {"file_id": "A", "performer": "P"}, "[audio]", None),
        ("document", {"file_id": "D"}, "[document]", None),
    ],
)
def test_media_placeholders(kind: str, obj: dict[str, Any], text: str, meta: object) -> None:
    event = one_event(message_with(**{kind: obj}))
    assert event.text == text
    [attachment] = event.attachments
    assert attachment.kind == kind
    assert attachment.provider_ref == obj["file_id"]
    assert attachment.filename == obj.get("file_name")
    for key in ("duration", "width", "height", "emoji", "title", "performer", "file_unique_id"):
        assert attachment.meta.get(key) == obj.get(key)


def test_animation_is_not_doubled_by_its_document_copy() -> None:
    anim = {"file_id": "G", "file_name": "x.mp4", "mime_type": "video/mp4", "duration": 2}
    event = one_event(message_with(animation=anim, document=anim))
    assert event.text == "[animation]"
    assert [a.kind for a in event.attachments] == ["animation"]
    assert event.attachments[0].mime_type == "video/mp4"


def test_caption_is_the_text_of_a_media_message() -> None:
    event = one_event(message_with(voice={"file_id": "V"}, caption="listen"))
    assert event.text == "listen"


def test_odd_attachment_is_skipped_not_the_message() -> None:
    photo = [{"width": 1, "height": 1}, {"file_id": "", "width": 2, "height": 2}]
    event = one_event(message_with(photo=photo, document={"file_id": "D", "file_size": -5}))
    assert event.text == "[photo]"
    assert event.attachments == []
    errors = event.message_meta["attachment_errors"]
    assert any(e.startswith("photo[0]: file_id") for e in errors)
    assert "photo: no usable size" in errors
    assert any(e.startswith("document: file_size") for e in errors)


def test_one_bad_photo_size_keeps_the_good_ones() -> None:
    photo = [{"file_id": "small", "width": 1, "height": 1}, {"width": "big"}]
    event = one_event(message_with(photo=photo))
    assert [a.provider_ref for a in event.attachments] == ["small"]
    assert len(event.message_meta["attachment_errors"]) == 1


@pytest.mark.parametrize(
    "service",
    [
        {"new_chat_members": [{"id": 5, "is_bot": False, "first_name": "N"}]},
        {"pinned_message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}}},
        {"text": ""},
    ],
)
def test_service_messages_are_ignored(service: dict[str, Any]) -> None:
    result = handle(message_with(**service))
    assert result.events == []
    assert result.ignored == "message without content (service message)"


@pytest.mark.parametrize("kind", ["my_chat_member", "poll", "business_message", "inline_query"])
def test_unsupported_update_types_are_ignored(kind: str) -> None:
    result = handle({"update_id": 1, kind: {"id": "x"}})
    assert result.events == []
    assert result.ignored == f"unsupported update type: {kind}"


def test_update_with_nothing_is_ignored() -> None:
    assert handle({"update_id": 1}).ignored == "unsupported update type: none"


def test_reply_and_forward_context() -> None:
    origin = {
        "type": "user",
        "date": 1441640000,
        "sender_user": {"id": 42, "is_bot": False, "first_name": "F"},
    }
    data = message_with(
        text="fwd",
        reply_to_message={"message_id": 1300, "date": 1, "chat": {"id": 1, "type": "private"}},
        forward_origin=origin,
        message_thread_id=7,
    )
    meta = one_event(data).message_meta
    assert meta["reply_to_message_id"] == 1300
    assert meta["forward_origin"] == {"type": "user", "date": 1441640000, "sender_user_id": 42}
    assert meta["message_thread_id"] == 7


def test_odd_reply_context_does_not_reject() -> None:
    meta = one_event(message_with(text="x", reply_to_message=[1], forward_origin="?")).message_meta
    assert "reply_to_message_id" not in meta
    assert "forward_origin" not in meta


# --- sender fallbacks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "first_name"),
    [
        ({"id": 9, "first_name": "", "username": "nick"}, "nick"),
        ({"id": 9, "username": "nick"}, "nick"),
        ({"id": 9, "first_name": "   "}, "Telegram user 9"),
        ({"id": 9}, "Telegram user 9"),
        ({"id": 9, "first_name": "x" * 300}, "x" * 255),
    ],
)
def test_user_first_name_is_never_empty(user: dict[str, Any], first_name: str) -> None:
    event = one_event(message_with(text="hi", **{"from": user}))
    assert event.sender.first_name == first_name
    # Only a real first name counts as a name; a later one replaces a made-up one.
    assert event.sender.name_is_placeholder == (not user.get("first_name", "").strip())
    assert event.sender.contact_value == "9"
    assert event.member_meta["username"] == user.get("username")


def test_channel_post_without_sender_chat_uses_chat() -> None:
    data = payload("channel_post")
    del data["channel_post"]["sender_chat"]
    data["channel_post"]["chat"] = {"id": -1001, "type": "channel"}
    event = one_event(data)
    assert event.sender.contact_value == "-1001"
    assert event.sender.first_name == "Telegram channel -1001"
    assert "chat_title" not in event.member_meta


def test_anonymous_group_admin_is_the_sender_chat() -> None:
    # Telegram fills `from` with a placeholder bot when a group admin posts anonymously.
    bot = {"id": 1087968824, "is_bot": True, "first_name": "Group"}
    group = {"id": -100123, "title": "Support", "type": "supergroup"}
    event = one_event(message_with(text="hi", chat=group, sender_chat=group, **{"from": bot}))
    assert event.sender.contact_value == "-100123"
    assert event.sender.first_name == "Support"
    assert event.member_meta["user_id"] == -100123


# --- authenticity (a missing secret, and the secret checked first: test_json_webhooks.py) -------


@pytest.mark.parametrize(
    "secret", ["s3cr3t-tokeN", "", "s3cr3t-token ", "s3cr3t-token\x00", "пароль"]
)
def test_wrong_secret_is_unauthorized(secret: str) -> None:
    with pytest.raises(Unauthorized):
        handle(raw("text_official"), secret=secret)


@pytest.mark.parametrize("config", [{}, {"secret_token": ""}, {"secret_token": None}])
def test_channel_without_secret_refuses_everything(config: dict[str, Any]) -> None:
    for secret in ("", "None", SECRET):
        with pytest.raises(Unauthorized):
            handle(raw("text_official"), ctx=context(make_channel(config)), secret=secret)


def test_right_secret_is_accepted() -> None:
    assert len(handle(raw("text_official")).events) == 1


# --- ids ----------------------------------------------------------------------------------------


def test_same_bytes_give_the_same_event_id() -> None:
    assert one_event(raw("photo")).event_id == one_event(raw("photo")).event_id


def test_an_edit_gets_another_event_id_but_the_same_message_id() -> None:
    original, edit = one_event(raw("text_official")), one_event(raw("edited_message"))
    assert original.event_id != edit.event_id
    assert original.external_message_id == edit.external_message_id
    assert edit.version > original.version


# --- rejections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("update_id",), MISSING, "update_id: field required"),
        (("update_id",), "10000", "update_id: input should be a valid integer"),
        (("update_id",), -1, "update_id: input should be greater than or equal to 0"),
        (("message", "chat"), MISSING, "message.chat: field required"),
        (("message", "message_id"), MISSING, "message.message_id: field required"),
        (("message", "date"), MISSING, "message.date: field required"),
        (("message", "date"), 1.5, "message.date: input should be a valid integer"),
        (("message", "date"), 10**12, "message.date: input should be less than or equal to"),
        (("message", "chat", "id"), 2**63, "message.chat.id: input should be less than or equal"),
        (("message", "chat", "id"), True, "message.chat.id: input should be a valid integer"),
        (("message", "from"), "me", "message.from: input should be an object"),
        (("message", "text"), 5, "message.text: input should be a valid string"),
        (("message",), [], "message: input should be an object"),
    ],
)
def test_invalid_update_is_unprocessable(path: tuple[str, ...], value: object, reason: str) -> None:
    with pytest.raises(UnprocessablePayload) as info:
        handle(mutated(payload("text_official"), path, value))
    assert info.value.status_code == 422
    assert info.value.reason.startswith(reason)


def test_non_finite_location_is_unprocessable() -> None:
    body = raw("location").replace(b"13.674550", b"NaN")
    with pytest.raises(UnprocessablePayload, match=r"message\.location\.latitude"):
        handle(body)


def test_huge_number_is_rejected() -> None:
    body = raw("text_official").replace(b"1111111", b"9" * 5000, 1)
    with pytest.raises(BadPayload):
        handle(body)
