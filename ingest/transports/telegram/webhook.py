"""Telegram Bot API webhooks: one `Update` JSON per request -> at most one `MessageEvent`.

Telegram signs nothing: the only proof of origin is the `secret_token` given to `setWebhook`,
echoed verbatim in `X-Telegram-Bot-Api-Secret-Token`. It is checked before the body is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.errors import BadPayload, Unauthorized, UnprocessablePayload
from ingest.events import (
    Attachment,
    MessageEvent,
    Sender,
    utc_from_unix,
)
from ingest.transports.base import (
    ParseContext,
    RawRequest,
    VerifyThenParse,
    WebhookResult,
    matches_any,
    parse_json_body,
    utf8,
    validation_reason,
)
from ingest.transports.channel_keys import build_config
from ingest.transports.telegram.keys import CONFIG_KEYS

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_NAME_MAX = 255  # Sender name columns; Telegram's own limit is 64, a forged body may exceed it

# Bounds keep every accepted number inside what the event, datetime and BIGINT columns can hold,
# so nothing past validation can overflow.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
NonNegInt = Annotated[int, Field(ge=0, le=2**63 - 1)]
UnixTime = Annotated[int, Field(ge=0, le=253_402_300_799)]  # up to 9999-12-31T23:59:59Z

# The update kinds carrying a Message, and the event each becomes. business_message is left out
# on purpose: it also carries the business owner's own outgoing messages, and its chat ids
# collide with the bot's private chats, so it needs more than this mapping.
_KINDS: dict[str, Literal["message.received", "message.edited"]] = {
    "message": "message.received",
    "edited_message": "message.edited",
    "channel_post": "message.received",
    "edited_channel_post": "message.edited",
}
_CHANNEL_KINDS = frozenset({"channel_post", "edited_channel_post"})

# Media fields in the order they are looked at. animation comes before document because
# Telegram also fills `document` on animation messages, for old clients.
_MEDIA = ("photo", "animation", "document", "voice", "audio", "video", "video_note", "sticker")
_PLACEHOLDER = {"voice": "[voice message]", "video_note": "[video message]"}  # else "[<kind>]"


class _In(BaseModel):
    # Strict: Telegram sends proper JSON types, so "123" for an id is a broken payload, not
    # something to coerce. Extra fields are ignored: the Bot API grows every few months.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class _User(_In):
    id: Int64
    # Required by the spec, but its absence is no reason to lose the message.
    first_name: str | None = None
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None


class _Chat(_In):
    id: Int64
    type: str
    title: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class _Location(_In):
    latitude: float
    longitude: float
    horizontal_accuracy: float | None = None
    live_period: NonNegInt | None = None
    heading: NonNegInt | None = None
    proximity_alert_radius: NonNegInt | None = None


class _Contact(_In):
    phone_number: str
    first_name: str
    last_name: str | None = None
    user_id: Int64 | None = None
    vcard: str | None = None


class _Venue(_In):
    location: _Location
    title: str
    address: str
    foursquare_id: str | None = None
    foursquare_type: str | None = None
    google_place_id: str | None = None
    google_place_type: str | None = None


class _File(_In):
    """Any Telegram file object (PhotoSize, Document, Voice, ...); validated one at a time."""

    file_id: str = Field(min_length=1)
    file_unique_id: str | None = None
    file_size: NonNegInt | None = None
    mime_type: str | None = None
    file_name: str | None = None
    duration: NonNegInt | None = None
    width: NonNegInt | None = None
    height: NonNegInt | None = None
    title: str | None = None
    performer: str | None = None
    emoji: str | None = None


class _Message(_In):
    message_id: NonNegInt
    date: UnixTime
    chat: _Chat
    from_: _User | None = Field(default=None, alias="from")
    sender_chat: _Chat | None = None
    edit_date: UnixTime | None = None
    text: str | None = None
    caption: str | None = None
    media_group_id: str | None = None
    message_thread_id: Int64 | None = None
    contact: _Contact | None = None
    location: _Location | None = None
    venue: _Venue | None = None
    # Media and context stay raw here: an odd attachment or reply must not cost the message,
    # so they are validated separately and their failures are only noted.
    photo: Any = None
    animation: Any = None
    document: Any = None
    voice: Any = None
    audio: Any = None
    video: Any = None
    video_note: Any = None
    sticker: Any = None
    reply_to_message: Any = None
    forward_origin: Any = None

    def has_content(self) -> bool:
        if self.text or self.caption or self.contact or self.location or self.venue:
            return True
        return any(getattr(self, name) is not None for name in _MEDIA)


class _Update(_In):
    # extra="allow" keeps the names of update kinds we do not model, for the `ignored` reason.
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    update_id: NonNegInt
    message: _Message | None = None
    edited_message: _Message | None = None
    channel_post: _Message | None = None
    edited_channel_post: _Message | None = None


def _reason(exc: ValidationError) -> str:
    return validation_reason(exc, "update")


def _parse(body: bytes) -> _Update:
    return parse_json_body(_Update, body, "update")


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _name(value: str | None) -> str | None:
    return value[:_NAME_MAX] if value and value.strip() else None


def _file(raw: Any, kind: str, errors: list[str]) -> _File | None:
    try:
        return _File.model_validate(raw)
    except ValidationError as exc:
        errors.append(f"{kind}: {_reason(exc)}")
        return None


_FILE_META = {"file_unique_id", "duration", "width", "height", "title", "performer", "emoji"}


def _attachment(kind: str, f: _File, mime_type: str | None) -> Attachment:
    meta = f.model_dump(include=_FILE_META, exclude_none=True)
    return Attachment(
        kind=kind,
        provider_ref=f.file_id,
        mime_type=mime_type,
        size_bytes=f.file_size,
        filename=f.file_name,
        meta=meta,
    )


def _area(f: _File) -> int:
    return (f.width or 0) * (f.height or 0)


def _media(msg: _Message, errors: list[str]) -> tuple[list[Attachment], str | None]:
    """Attachments, and the placeholder text for the first media kind present."""
    attachments: list[Attachment] = []
    placeholder: str | None = None
    for kind in _MEDIA:
        raw = getattr(msg, kind)
        if raw is None or (kind == "document" and msg.animation is not None):
            continue
        first = placeholder is None
        placeholder = placeholder or _PLACEHOLDER.get(kind, f"[{kind}]")
        if kind == "photo":
            # Every size of one picture: keep only the largest (Telegram lists it last; the
            # index breaks ties so that order wins when sizes are missing).
            sizes = raw if isinstance(raw, list) else [raw]
            valid = [(i, f) for i, s in enumerate(sizes) if (f := _file(s, f"photo[{i}]", errors))]
            if not valid:
                errors.append("photo: no usable size")
                continue
            _, best = max(valid, key=lambda p: (_area(p[1]), p[1].file_size or 0, p[0]))
            attachments.append(_attachment("photo", best, "image/jpeg"))
            continue
        f = _file(raw, kind, errors)
        if f is None:
            continue
        if first and f.file_name and kind in ("document", "audio"):
            placeholder = f"[{kind}: {f.file_name}]"
        attachments.append(_attachment(kind, f, f.mime_type))
    return attachments, placeholder


def _int_at(raw: Any, *path: str) -> int | None:
    """A nested integer from raw JSON, or None: for context that must never reject a message."""
    for key in path:
        raw = raw.get(key) if isinstance(raw, dict) else None
    ok = isinstance(raw, int) and not isinstance(raw, bool) and -(2**63) <= raw < 2**63
    return raw if ok else None


def _str_at(raw: Any, key: str) -> str | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _forward_origin(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or _str_at(raw, "type") is None:
        return None
    origin = {
        "type": _str_at(raw, "type"),
        "date": _int_at(raw, "date"),
        "sender_user_id": _int_at(raw, "sender_user", "id"),
        "sender_user_name": _str_at(raw, "sender_user_name"),
        "sender_chat_id": _int_at(raw, "sender_chat", "id"),
        "chat_id": _int_at(raw, "chat", "id"),
        "message_id": _int_at(raw, "message_id"),
        "author_signature": _str_at(raw, "author_signature"),
    }
    return _drop_none(origin)


def _text(msg: _Message, placeholder: str | None) -> str:
    if msg.text:
        return msg.text
    if msg.caption:
        return msg.caption
    if msg.contact:
        name = " ".join(p for p in (msg.contact.first_name, msg.contact.last_name) if p)
        return f"Contact: {name}, {msg.contact.phone_number}"
    # A venue message also carries `location`, so the venue is the better rendering.
    if msg.venue:
        return f"Venue: {msg.venue.title}, {msg.venue.address}"
    if msg.location:
        return f"Location: {msg.location.latitude}, {msg.location.longitude}"
    return placeholder or ""


def _sender(kind: str, msg: _Message) -> tuple[Sender, dict[str, Any]]:
    """The sender and its member_meta. A chat speaks when the post is a channel's, or when
    `sender_chat` is set (anonymous admins, linked channels): `from` is then a placeholder bot."""
    chat = msg.chat
    if kind in _CHANNEL_KINDS or msg.sender_chat is not None or msg.from_ is None:
        who = msg.sender_chat or chat
        label = "channel" if who.type == "channel" else "chat"
        first = _name(who.title) or _name(who.first_name)
        sender = Sender(
            contact_type="telegram",
            contact_value=str(who.id),
            first_name=first or _name(who.username) or f"Telegram {label} {who.id}",
            name_is_placeholder=first is None,
        )
        meta = {"user_id": who.id, "username": who.username}
    else:
        user = msg.from_
        sender = Sender(
            contact_type="telegram",
            contact_value=str(user.id),
            first_name=_name(user.first_name) or _name(user.username) or f"Telegram user {user.id}",
            last_name=_name(user.last_name),
            name_is_placeholder=_name(user.first_name) is None,
        )
        meta = {"user_id": user.id, "username": user.username}
        if user.language_code:
            meta["language_code"] = user.language_code
    meta = {"chat_id": chat.id, **meta, "chat_type": chat.type}
    if chat.title:
        meta["chat_title"] = chat.title
    return sender, meta


def _message_meta(update_id: int, msg: _Message, errors: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"update_id": update_id}
    if msg.location:
        meta["location"] = msg.location.model_dump(exclude_none=True)
    if msg.contact:
        meta["contact"] = msg.contact.model_dump(exclude_none=True)
    if msg.venue:
        meta["venue"] = msg.venue.model_dump(exclude_none=True)
    optional = {
        "reply_to_message_id": _int_at(msg.reply_to_message, "message_id"),
        "media_group_id": msg.media_group_id,
        "message_thread_id": msg.message_thread_id,
        "forward_origin": _forward_origin(msg.forward_origin),
    }
    meta.update(_drop_none(optional))
    if errors:
        meta["attachment_errors"] = errors
    return meta


class TelegramAdapter(VerifyThenParse):
    transport: ClassVar[Literal["telegram"]] = "telegram"

    def verify(self, request: RawRequest, ctx: ParseContext) -> None:
        self._verify(request, ctx)

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        if request.media_type != "application/json":
            raise BadPayload("expected application/json")
        update = _parse(request.body)
        kind = next((k for k in _KINDS if getattr(update, k) is not None), None)
        if kind is None:
            # Not an error: Telegram sends what allowed_updates lets through, and a non-2xx
            # answer would only make it retry.
            name = next(iter(update.model_extra or {}), "none")
            return WebhookResult(events=[], ignored=f"unsupported update type: {name}")
        msg: _Message = getattr(update, kind)
        if not msg.has_content():
            return WebhookResult(events=[], ignored=f"{kind} without content (service message)")
        try:
            event = self._event(ctx, update.update_id, kind, msg)
        except ValidationError as exc:
            # Validation above should make this unreachable; it is the last translation point.
            raise UnprocessablePayload(_reason(exc)) from exc
        return WebhookResult(events=[event])

    @staticmethod
    def _verify(request: RawRequest, ctx: ParseContext) -> None:
        accepted = ctx.channel.secrets("secret_token")
        given = request.header(SECRET_HEADER)
        if given is None:
            raise Unauthorized(f"missing {SECRET_HEADER}")
        # A channel without a secret would accept anyone: refuse rather than trust.
        if not accepted or not matches_any(utf8(given), map(utf8, accepted)):
            raise Unauthorized("invalid secret token")

    @staticmethod
    def _event(ctx: ParseContext, update_id: int, kind: str, msg: _Message) -> MessageEvent:
        errors: list[str] = []
        attachments, placeholder = _media(msg, errors)
        sender, member_meta = _sender(kind, msg)
        edit_date = msg.edit_date or None
        return MessageEvent(
            # The edit date is part of the id: a redelivery repeats it, an edit does not.
            **ctx.envelope(
                "telegram", sender.contact_value, msg.chat.id, msg.message_id, edit_date or 0
            ),
            event_type=_KINDS[kind],
            external_message_id=f"{msg.chat.id}:{msg.message_id}",
            version=(edit_date or msg.date) * 1000,
            sent_at=utc_from_unix(msg.date),
            edited_at=utc_from_unix(edit_date) if edit_date else None,
            sender=sender,
            text=_text(msg, placeholder),
            attachments=attachments,
            member_meta=member_meta,
            message_meta=_message_meta(update_id, msg, errors),
        )

    def channel_config(
        self, given: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_config("telegram", CONFIG_KEYS, given, current)
