"""The Cloud API webhook payload, read leniently: the envelope validated by pydantic, each
message and status element read on its own (a malformed one is kept, its siblings go on), and
rendered into text, attachments and meta."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, cast, overload

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from ingest.errors import (
    UnprocessablePayload,
)
from ingest.events import (
    Attachment,
    MessageStatus,
    Sender,
    StatusEvent,
    utc_from_unix,
)
from ingest.identity import normalize_phone
from ingest.transports.base import (
    KeptElement,
    ParseContext,
    parse_json_body,
    validation_reason,
)

UNSUPPORTED = "[unsupported message]"
DELETED = "[message deleted]"
_NAME_MAX = 255  # the Sender columns
_MAX_UNIX = 253_402_300_799  # 9999-12-31T23:59:59Z: anything later overflows datetime
_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
_MEDIA = frozenset({"image", "video", "audio", "document", "sticker"})
_REFERRAL = ("source_url", "source_id", "source_type", "headline", "body", "ctwa_clid")
_REPLIES = ("button_reply", "list_reply", "nfm_reply")
_KNOWN = frozenset(
    {"text", "location", "contacts", "interactive", "button", "reaction", "edit", "revoke"}
)

T = TypeVar("T")


def _unix(value: object) -> int:
    """Meta sends Unix seconds as a string of digits; a JSON integer is accepted as well."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UNIX:
        raise ValueError("expected Unix seconds as a string of digits")
    return value


UnixTime = Annotated[int, PlainValidator(_unix)]
Wamid = Annotated[str, Field(min_length=1, max_length=512)]
UserId = Annotated[str, Field(min_length=1, max_length=_NAME_MAX)]


class _In(BaseModel):
    # Strict like the other adapters: Meta sends proper JSON types. Extra fields are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)


class _Message(_In):
    # The content (text, image, location, ...) stays raw in `model_extra`, read by `_render`.
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    id: Wamid
    type: str = Field(min_length=1, max_length=64)
    timestamp: UnixTime
    from_: UserId | None = Field(default=None, alias="from")
    from_user_id: UserId | None = None


class _Status(_In):
    id: Wamid
    status: str = Field(max_length=64)
    timestamp: UnixTime
    recipient_id: UserId | None = None
    recipient_user_id: UserId | None = None
    errors: Any = None
    conversation: Any = None
    pricing: Any = None


class _Metadata(_In):
    phone_number_id: str = Field(min_length=1, max_length=64)
    display_phone_number: str | None = None


class _Value(_In):
    metadata: _Metadata
    contacts: Any = None  # only names the senders: an odd entry must not cost the messages
    # Raw here, validated one by one: a broken element is kept, its siblings go on.
    messages: list[Any] = Field(default_factory=list)
    statuses: list[Any] = Field(default_factory=list)
    errors: Any = None


class _Change(_In):
    field: str
    value: _Value | None = None

    @model_validator(mode="before")
    @classmethod
    def _messages_only(cls, data: Any) -> Any:
        # Other fields (account_update, template_status_update, ...) have other value shapes;
        # a `messages` change must have a value ({} fails on its missing metadata).
        if isinstance(data, dict) and data.get("field") != "messages":
            return {k: v for k, v in data.items() if k != "value"}
        return (
            {**data, "value": {}} if isinstance(data, dict) and data.get("value") is None else data
        )


class _Entry(_In):
    id: str = Field(min_length=1, max_length=64)
    changes: list[_Change]


class _Envelope(_In):
    object: Literal["whatsapp_business_account"]
    entry: list[_Entry]


def _reason(exc: ValidationError) -> str:
    return validation_reason(exc, "body")


def _parse(body: bytes) -> _Envelope:
    return parse_json_body(_Envelope, body, "body")


# --- lenient readers: raw JSON in, a typed value or None out -------------------------------------


def _as(value: Any, kind: type[T]) -> T | None:
    """`value` if it is a `kind` (an int must fit a BIGINT and not be a bool), else None."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        return None
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return None
    return value


@overload
def _at(raw: Any, key: str) -> str | None: ...
@overload
def _at(raw: Any, key: str, kind: type[T]) -> T | None: ...
def _at(raw: Any, key: str, kind: type[Any] = str) -> Any:
    return _as(raw.get(key) if isinstance(raw, dict) else None, kind)


def _strs(raw: Any, *keys: str) -> dict[str, str]:
    return {k: v for k in keys if (v := _at(raw, k)) is not None}


def _num(raw: Any, key: str) -> float | int | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value if abs(value) <= 1e6 else None


def _list(raw: Any, key: str) -> list[dict[str, Any]]:
    items = raw.get(key) if isinstance(raw, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _some(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _name(value: str | None) -> str | None:
    return value[:_NAME_MAX] if value and value.strip() else None


def _phone(raw: str | None, region: str | None = None) -> str | None:
    return normalize_phone(raw[:64] if raw else None, region)


def _errors(raw: Any) -> list[dict[str, Any]] | None:
    items = [
        {
            **_strs(e, "title", "message", "href"),
            **({"code": code} if (code := _at(e, "code", int)) is not None else {}),
            **_strs(e.get("error_data"), "details"),
        }
        for e in _list({"e": raw}, "e")[:10]
    ]
    return [e for e in items if e] or None


def _context(raw: Any) -> dict[str, Any] | None:
    flags = {k: v for k in ("forwarded", "frequently_forwarded") if (v := _at(raw, k, bool))}
    product = _strs(_at(raw, "referred_product", dict), "catalog_id", "product_retailer_id")
    context = {**_strs(raw, "from", "id"), **flags}
    return (context | {"referred_product": product} if product else context) or None


# --- content ------------------------------------------------------------------------------------


def _media(kind: str, raw: Any, meta: dict[str, Any]) -> tuple[str, list[Attachment]]:
    """One attachment (skipped, and noted, when its media id is missing) and the text."""
    voice = kind == "audio" and _at(raw, "voice", bool) is True
    facts = _strs(raw, "mime_type", "sha256", "url", "filename")
    filename = facts.pop("filename", None)
    placeholder = "[voice message]" if voice else f"[{kind}]"
    if kind == "document" and filename:
        placeholder = f"[document: {filename}]"
    attachments = []
    if (media_id := _at(raw, "id")) and len(media_id) <= 512:
        animated = _at(raw, "animated", bool)
        attachment = Attachment(
            kind="voice" if voice else kind,
            provider_ref=media_id,
            mime_type=facts.pop("mime_type", None),
            filename=filename,
            meta=facts | ({"animated": animated} if animated is not None else {}),
        )
        attachments.append(attachment)
    else:
        meta["attachment_errors"] = [f"{kind}: no media id"]
    return _at(raw, "caption") or placeholder, attachments


def _card(card: dict[str, Any], region: str | None) -> tuple[str, dict[str, Any]]:
    """A shared contact card (not the sender): raw phones kept, E.164 added where it parses."""
    names = _strs(card.get("name"), "formatted_name", "first_name", "last_name")
    first_last = " ".join(names[k] for k in ("first_name", "last_name") if k in names)
    name = names.get("formatted_name") or first_last or "?"
    phones = []
    for p in _list(card, "phones"):
        phone = _strs(p, "phone", "wa_id", "type")
        e164 = _phone(phone.get("phone"), region)
        phones.append(phone | {"phone_e164": e164} if e164 else phone)
    numbers = ", ".join(p["phone"] for p in phones if "phone" in p)
    emails = [e for x in _list(card, "emails") if (e := _at(x, "email"))]
    meta = {**names, "name": name, "phones": phones} | ({"emails": emails} if emails else {})
    return f"Contact: {name}" + (f", {numbers}" if numbers else ""), meta


def _render(
    kind: str, parts: Mapping[str, Any], region: str | None, meta: dict[str, Any]
) -> tuple[str, list[Attachment]]:
    """Text and attachments of one message's content; its facts go into `meta`."""
    raw, text = parts.get(kind), None
    if kind in _MEDIA:
        return _media(kind, raw, meta)
    lat, lon = _num(raw, "latitude"), _num(raw, "longitude")
    if kind == "text":
        text = _at(raw, "body")
    elif kind == "location" and lat is not None and lon is not None:
        where = ", ".join(v for k in ("name", "address") if (v := _at(raw, k)))
        text = f"Location: {lat}, {lon}" + (f" ({where})" if where else "")
        meta["location"] = {"latitude": lat, "longitude": lon} | _strs(
            raw, "name", "address", "url"
        )
    elif kind == "contacts" and (cards := _list(parts, "contacts")):
        rendered = [_card(card, region) for card in cards[:50]]
        text = "\n".join(line for line, _ in rendered)
        meta["contacts"] = [card for _, card in rendered]
    elif kind == "interactive" and (itype := _at(raw, "type")) in _REPLIES:
        reply = _at(raw, itype, dict)
        if itype == "nfm_reply" and reply is not None:
            text = _at(reply, "body") or "[form response]"
            meta["interactive"] = {"type": itype} | _strs(reply, "name", "body", "response_json")
        elif (text := _at(reply, "title")) is not None:
            meta["interactive"] = {"type": itype} | _strs(reply, "id", "title", "description")
    elif kind == "button" and (text := _at(raw, "text")) is not None:
        meta["button"] = _strs(raw, "text", "payload")
    elif kind == "reaction" and (reacted_to := _at(raw, "message_id")):
        emoji = _at(raw, "emoji") or ""
        text = f"Reacted {emoji}" if emoji else "Removed reaction"
        meta["reaction"] = {"message_id": reacted_to, "emoji": emoji}
    if text is None and kind in _KNOWN:
        meta["content_errors"] = [f"{kind}: missing or malformed content"]
    return (UNSUPPORTED if text is None else text), []


def _contacts(raw: Any) -> list[dict[str, str]]:
    """`value.contacts`, read leniently: they only name the senders."""
    out = []
    for c in _list({"c": raw}, "c"):
        ids = _strs(c, "wa_id", "user_id", "parent_user_id")
        ids = {k: v for k, v in ids.items() if 0 < len(v) <= _NAME_MAX}
        out.append(ids | _strs(c.get("profile"), "name", "username"))
    return out


def _sender(msg: _Message, contacts: list[dict[str, str]]) -> tuple[Sender, dict[str, Any]] | None:
    """The sender and its member_meta; None when the message names nobody."""
    ids = (("wa_id", msg.from_), ("user_id", msg.from_user_id))
    match = next((c for c in contacts if any(v and c.get(k) == v for k, v in ids)), None)
    # Without a match, the first contact is the sender only when it cannot be someone else's.
    if match is None and contacts and (len(contacts) == 1 or not (msg.from_ or msg.from_user_id)):
        match = contacts[0]
    c = match or {}
    wa_id, user_id = msg.from_ or c.get("wa_id"), msg.from_user_id or c.get("user_id")
    phone = _phone(wa_id)
    if not (identity := phone or wa_id or user_id):
        return None
    profile = _name(c.get("name"))
    sender = Sender(
        contact_type="whatsapp",
        contact_value=identity,
        first_name=profile or _name(c.get("username")) or identity,
        phone_e164=phone,
        user_id=user_id,
        name_is_placeholder=profile is None,
    )
    meta = {"wa_id": wa_id, "user_id": user_id, "parent_user_id": c.get("parent_user_id")}
    return sender, meta | {"username": c.get("username"), "phone": phone}


def _status_meta(status: _Status) -> dict[str, Any]:
    raw = status.conversation
    origin = _strs(_at(raw, "origin", dict), "type")
    conversation = _strs(raw, "id", "expiration_timestamp") | ({"origin": origin} if origin else {})
    pricing = _strs(status.pricing, "pricing_model", "category", "type")
    pricing |= _some({"billable": _at(status.pricing, "billable", bool)})
    meta = {
        "recipient_id": status.recipient_id,
        "recipient_user_id": status.recipient_user_id,
        "errors": _errors(status.errors),
        "conversation": conversation or None,
        "pricing": pricing or None,
    }
    return _some(meta)


def _status_event(ctx: ParseContext, status: _Status, business: dict[str, Any]) -> StatusEvent:
    who = _phone(status.recipient_id) or status.recipient_id or status.recipient_user_id
    return StatusEvent(
        **ctx.envelope("whatsapp", who or status.id, status.id, status.status, status.timestamp),
        event_type="message.status",
        external_message_id=status.id,
        status=cast(MessageStatus, status.status),  # checked against _STATUSES
        status_at=utc_from_unix(status.timestamp),
        meta=_status_meta(status) | business,
    )


def _kept(
    entry: _Entry, value: _Value, key: str, raw: Any, where: str, exc: UnprocessablePayload
) -> KeptElement:
    """A broken element as a request of its own: its raw JSON in a one-element envelope of its
    entry (metadata and contacts included), so `dlq replay` parses it like any webhook."""
    change_value = {
        "metadata": value.metadata.model_dump(exclude_none=True),
        **({"contacts": value.contacts} if value.contacts is not None else {}),
        key: [raw],
    }
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": entry.id, "changes": [{"field": "messages", "value": change_value}]}],
    }
    return KeptElement(
        body=json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(),
        content_type="application/json",
        element=where,
        reason=exc.reason[:500],
        reason_kind=exc.reason_kind,
    )
