"""TelegramAdapter: the real payloads of providers.md §1, authenticity, ids and rejections."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.errors import BadPayload, ChannelConfigError, Unauthorized, UnprocessablePayload
from ingest.events import (
    Attachment,
    MessageEvent,
    Sender,
    conversation_key,
    decode_event,
    encode_event,
    make_event_id,
)
from ingest.events import utc_from_unix as ts
from ingest.transports.base import Channel, ParseContext, RawRequest, WebhookResult
from ingest.transports.telegram import SECRET_HEADER, TelegramAdapter
from tests.unit.adapters import PAYLOADS, RECEIVED_AT, TENANT_ID, captured, channel, context

CHANNEL_ID = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
SECRET = "s3cr3t-token"
_MISSING = object()

adapter = TelegramAdapter()


def make_channel(config: dict[str, Any] | None = None) -> Channel:
    return channel("telegram", CHANNEL_ID, {"secret_token": SECRET} if config is None else config)


def make_ctx(channel: Channel | None = None, correlation_id: str | None = "corr-1") -> ParseContext:
    return context(channel or make_channel(), correlation_id=correlation_id)


def make_request(
    body: bytes | str | dict[str, Any] | list[Any],
    secret: object = SECRET,
    content_type: str | None = "application/json",
) -> RawRequest:
    if isinstance(body, dict | list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if secret is not _MISSING:
        headers[SECRET_HEADER.lower()] = str(secret)
    return RawRequest(
        method="POST", url="https://x/webhooks/telegram/c", headers=headers, body=body
    )


def raw(name: str) -> bytes:
    return captured("telegram", f"{name}.json")


def payload(name: str) -> dict[str, Any]:
    return json.loads(raw(name))


def handle(body: bytes | str | dict[str, Any] | list[Any], **kwargs: Any) -> WebhookResult:
    return adapter.handle(make_request(body, **kwargs), make_ctx())


def one_event(body: bytes | str | dict[str, Any]) -> MessageEvent:
    result = handle(body)
    assert result.ignored is None
    assert len(result.events) == 1
    event = result.events[0]
    assert isinstance(event, MessageEvent)
    return event


TEST_USER = Sender(
    contact_type="telegram",
    contact_value="1111111",
    first_name="Test Firstname",
    last_name="Test Lastname",
)
TEST_USER_META = {
    "chat_id": 1111111,
    "user_id": 1111111,
    "username": "Testusername",
    "chat_type": "private",
}
IRINA = Sender(
    contact_type="telegram", contact_value="86815320", first_name="Ирина", last_name="Киселёва"
)
IRINA_META = {
    "chat_id": 86815320,
    "user_id": 86815320,
    "username": "Irina_V_Kiseleva",
    "language_code": "en",
    "chat_type": "private",
}
WORAKORN = Sender(
    contact_type="telegram", contact_value="527317977", first_name="Worakorn", last_name="CXA"
)
WORAKORN_META = {
    "chat_id": -1001319789908,
    "user_id": 527317977,
    "username": "WorakornX",
    "language_code": "en-TH",
    "chat_type": "supergroup",
    "chat_title": "CXABottesting",
}


def assert_common(event: MessageEvent, chat_id: int, message_id: int, edit_date: int = 0) -> None:
    assert event.schema_version == 1
    assert event.tenant_id == TENANT_ID
    assert event.channel_id == CHANNEL_ID
    assert event.transport == "telegram"
    assert event.received_at == RECEIVED_AT
    assert event.correlation_id == "corr-1"
    assert event.external_message_id == f"{chat_id}:{message_id}"
    assert event.event_id == make_event_id(CHANNEL_ID, "telegram", chat_id, message_id, edit_date)
    key = conversation_key(TENANT_ID, "telegram", event.sender.contact_value)
    assert event.conversation_key == key
    assert decode_event(encode_event(event)) == event


# --- the payloads of providers.md §1, field by field ---------------------------------------------


def test_text_official() -> None:
    event = one_event(raw("text_official"))
    assert_common(event, 1111111, 1365)
    assert event.event_type == "message.received"
    assert event.sender == TEST_USER
    assert event.text == "/start"
    assert event.attachments == []
    assert event.sent_at == ts(1441645532) == datetime(2015, 9, 7, 17, 5, 32, tzinfo=UTC)
    assert event.edited_at is None
    assert event.version == 1441645532000
    assert event.member_meta == TEST_USER_META
    assert event.message_meta == {"update_id": 10000}


def test_text_real_cyrillic() -> None:
    event = one_event(raw("text_real_cyrillic"))
    assert_common(event, 86815320, 8)
    assert event.sender == IRINA
    assert event.text == "just text"
    assert event.sent_at == ts(1680378147)
    assert event.version == 1680378147000
    assert event.member_meta == IRINA_META
    assert event.message_meta == {"update_id": 494890303}


def test_photo_keeps_only_the_largest_size() -> None:
    event = one_event(raw("photo"))
    assert_common(event, 86815320, 4)
    assert event.sender == IRINA
    assert event.text == "[photo]"
    assert event.attachments == [
        Attachment(
            kind="photo",
            provider_ref="AgACAgIAAxkBAAMEZCiCg7A1qAABECDXqbjnqtId777bAAIFyDEbLKhISVFwzRK8kZMNAQADAgADeQADLwQ",
            mime_type="image/jpeg",
            size_bytes=132533,
            filename=None,
            meta={"file_unique_id": "AQADBcgxGyyoSEl-", "width": 721, "height": 1280},
        )
    ]
    assert event.sent_at == ts(1680376451)
    assert event.member_meta == IRINA_META
    assert event.message_meta == {"update_id": 494890299, "media_group_id": "13443011608618786"}


def test_photo_largest_is_chosen_by_area_not_position() -> None:
    data = payload("photo")
    data["message"]["photo"].reverse()
    data["message"]["caption"] = "a cat"
    event = one_event(data)
    assert event.text == "a cat"
    assert event.attachments[0].meta["width"] == 721


def test_document() -> None:
    event = one_event(raw("document"))
    assert_common(event, 1111111, 1365)
    assert event.sender == TEST_USER
    assert event.text == "[document: Testfile.pdf]"
    assert event.attachments == [
        Attachment(
            kind="document",
            provider_ref="AwADBAADbXXXXXXXXXXXGBdhD2l6_XX",
            mime_type="application/pdf",
            size_bytes=536392,
            filename="Testfile.pdf",
            meta={},
        )
    ]
    assert event.member_meta == TEST_USER_META
    assert event.message_meta == {"update_id": 10000}


def test_voice() -> None:
    event = one_event(raw("voice"))
    assert_common(event, 1111111, 1365)
    assert event.sender == TEST_USER
    assert event.text == "[voice message]"
    assert event.attachments == [
        Attachment(
            kind="voice",
            provider_ref="AwADBAADbXXXXXXXXXXXGBdhD2l6_XX",
            mime_type="audio/ogg",
            size_bytes=23000,
            meta={"duration": 5},
        )
    ]
    assert event.message_meta == {"update_id": 10000}


def test_edited_message() -> None:
    event = one_event(raw("edited_message"))
    assert_common(event, 1111111, 1365, edit_date=1441646600)
    assert event.event_type == "message.edited"
    assert event.sender == TEST_USER
    assert event.text == "Edited text"
    assert event.sent_at == ts(1441645532)
    assert event.edited_at == ts(1441646600)
    assert event.version == 1441646600000
    assert event.member_meta == TEST_USER_META


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
    post = data.pop("channel_post")
    data["edited_channel_post"] = {**post, "text": "13", "edit_date": 1680549100}
    event = one_event(data)
    assert event.event_type == "message.edited"
    assert event.sender.contact_value == "-1001961815317"
    assert event.edited_at == ts(1680549100)
    assert event.version == 1680549100000


def test_location() -> None:
    event = one_event(raw("location"))
    assert_common(event, -1001319789908, 217)
    assert event.sender == WORAKORN
    assert event.text == "Location: 13.67455, 100.534625"
    assert event.attachments == []
    assert event.sent_at == ts(1529561866)
    assert event.member_meta == WORAKORN_META
    assert event.message_meta == {
        "update_id": 271683424,
        "location": {"latitude": 13.674550, "longitude": 100.534625},
    }


def test_contact() -> None:
    event = one_event(raw("contact"))
    assert_common(event, -1001319789908, 221)
    assert event.sender == WORAKORN
    assert event.text == "Contact: Wundzen 💎, 0815432345"
    assert event.member_meta == WORAKORN_META
    assert event.message_meta == {
        "update_id": 271683426,
        "contact": {"phone_number": "0815432345", "first_name": "Wundzen 💎"},
    }


@pytest.mark.parametrize("name", sorted(p.stem for p in (PAYLOADS / "telegram").glob("*.json")))
def test_every_payload_round_trips(name: str) -> None:
    result = handle(raw(name))
    for event in result.events:
        assert decode_event(encode_event(event)) == event


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


# --- authenticity -------------------------------------------------------------------------------


def test_missing_secret_is_unauthorized() -> None:
    with pytest.raises(Unauthorized) as info:
        handle(raw("text_official"), secret=_MISSING)
    assert info.value.status_code == 401


def test_wrong_secret_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        handle(raw("text_official"), secret="s3cr3t-tokeN")


@pytest.mark.parametrize("secret", ["", "s3cr3t-token ", "s3cr3t-token\x00", "пароль"])
def test_near_miss_secrets_are_unauthorized(secret: str) -> None:
    with pytest.raises(Unauthorized):
        handle(raw("text_official"), secret=secret)


def test_secret_is_checked_before_parsing() -> None:
    with pytest.raises(Unauthorized):
        handle(b"{not json", secret="wrong")
    with pytest.raises(Unauthorized):
        handle(b"{not json", secret="wrong", content_type="text/plain")


@pytest.mark.parametrize("config", [{}, {"secret_token": ""}, {"secret_token": None}])
def test_channel_without_secret_refuses_everything(config: dict[str, Any]) -> None:
    for secret in ("", "None", SECRET):
        request = make_request(raw("text_official"), secret=secret)
        with pytest.raises(Unauthorized):
            adapter.handle(request, make_ctx(make_channel(config)))


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


def test_event_id_depends_on_the_channel() -> None:
    other = Channel(
        id=uuid.uuid4(), tenant_id=TENANT_ID, transport="telegram", config={"secret_token": SECRET}
    )
    a = adapter.handle(make_request(raw("text_official")), make_ctx(other)).events[0]
    assert a.event_id != one_event(raw("text_official")).event_id


def test_context_is_copied_into_the_event() -> None:
    ctx = make_ctx(correlation_id=None)
    event = adapter.handle(make_request(raw("text_official")), ctx).events[0]
    assert event.correlation_id is None
    assert event.received_at == RECEIVED_AT


# --- rejections ---------------------------------------------------------------------------------


def mutate(path: tuple[str, ...], value: object = _MISSING) -> dict[str, Any]:
    data = copy.deepcopy(payload("text_official"))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _MISSING:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("update_id",), _MISSING, "update_id: field required"),
        (("update_id",), "10000", "update_id: input should be a valid integer"),
        (("update_id",), -1, "update_id: input should be greater than or equal to 0"),
        (("message", "chat"), _MISSING, "message.chat: field required"),
        (("message", "message_id"), _MISSING, "message.message_id: field required"),
        (("message", "date"), _MISSING, "message.date: field required"),
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
        handle(mutate(path, value))
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


def test_deep_nesting_is_rejected() -> None:
    with pytest.raises(BadPayload):
        handle(b'{"update_id": 1, "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")


# --- channel_config -----------------------------------------------------------------------------


def test_channel_config_generates_a_valid_secret() -> None:
    first, second = adapter.channel_config({}), adapter.channel_config({})
    assert set(first) == {"secret_token"}
    assert first["secret_token"] != second["secret_token"]
    assert adapter.channel_config(first) == first  # a generated token is itself valid


@pytest.mark.parametrize("token", ["a", "A-z_0-9", "x" * 256])
def test_channel_config_keeps_a_valid_secret(token: str) -> None:
    assert adapter.channel_config({"secret_token": token}) == {"secret_token": token}


@pytest.mark.parametrize("token", ["", "x" * 257, "has space", "slash/", "ümlaut", "abc\n"])
def test_channel_config_rejects_an_invalid_secret(token: str) -> None:
    with pytest.raises(ChannelConfigError, match="secret_token"):
        adapter.channel_config({"secret_token": token})


def test_channel_config_rejects_unknown_keys() -> None:
    with pytest.raises(ChannelConfigError, match="unknown config key for telegram: bot_token"):
        adapter.channel_config({"secret_token": "abc", "bot_token": "123:abc"})


def test_transport_name() -> None:
    assert TelegramAdapter.transport == "telegram"
