"""WhatsApp Business Cloud API webhooks: one signed POST -> every message and status it batches.

Meta signs each POST with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app_secret, raw body)>`;
it is checked on the raw bytes, in constant time, before the body is parsed. A POST holds up to
1000 updates (entry -> changes -> value.messages[] / value.statuses[]); each becomes one event.
The GET handshake echoes `hub.challenge` when `hub.verify_token` matches the channel's token.

The envelope is strict (a broken one keeps the whole body as a dead letter); each element of a
batch (a `messages[]` or `statuses[]` entry) is validated on its own, so a broken one is kept as
a dead letter (its raw JSON inside a one-element envelope of its entry, replayable as a request
of its own) and never costs its siblings. What a message says is read leniently: odd content
costs a placeholder and a note in `message_meta`, never the message.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import phonenumbers
from pydantic import ValidationError

from ingest.errors import (
    BadPayload,
    ChannelMismatch,
    Forbidden,
    NoSender,
    Unauthorized,
    UnprocessablePayload,
)
from ingest.events import (
    MessageEvent,
    Sender,
    utc_from_unix,
)
from ingest.transports.base import (
    Channel,
    Event,
    KeptElement,
    ParseContext,
    RawRequest,
    VerifyThenParse,
    WebhookResult,
    matches_any,
    utf8,
    validation_reason,
)
from ingest.transports.channel_keys import build_config
from ingest.transports.whatsapp.keys import CONFIG_KEYS
from ingest.transports.whatsapp.payload import (
    _REFERRAL,
    _STATUSES,
    DELETED,
    _at,
    _contacts,
    _context,
    _Entry,
    _errors,
    _kept,
    _Message,
    _parse,
    _render,
    _sender,
    _some,
    _Status,
    _status_event,
    _strs,
    _Value,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_RE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII without spaces
MAX_UPDATES = 1000  # Meta: "a batch with a maximum of 1000 updates"


class WhatsAppAdapter(VerifyThenParse):
    transport: ClassVar[Literal["whatsapp"]] = "whatsapp"

    def __init__(self, default_region: str | None = None) -> None:
        region = default_region.upper() if default_region else None
        if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region: {default_region}")
        # For free-text phones in shared contact cards ("0815 432345"); `from` needs none.
        self.default_region = region

    def handshake(self, request: RawRequest, channel: Channel) -> str:
        """The GET subscription check: the challenge to echo as text/plain, or Forbidden."""
        if request.query_value("hub.mode") != "subscribe":
            raise Forbidden("hub.mode must be subscribe")
        given = utf8(request.query_value("hub.verify_token") or "")
        accepted = channel.secrets("verify_token")
        if not accepted or not given or not matches_any(given, map(utf8, accepted)):
            raise Forbidden("invalid verify token")
        challenge = request.query_value("hub.challenge")
        if challenge is None or not _TOKEN_RE.fullmatch(challenge):
            raise Forbidden("hub.challenge must be 1-256 printable characters")
        return challenge

    def verify(self, request: RawRequest, ctx: ParseContext) -> None:
        self._verify(request, ctx.channel)

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        if request.media_type != "application/json":
            raise BadPayload("expected application/json")
        envelope = _parse(request.body)
        values: list[tuple[str, _Entry, _Value]] = []
        other_fields: set[str] = set()
        for i, entry in enumerate(envelope.entry):
            for j, change in enumerate(entry.changes):
                if change.value is None:
                    other_fields.add(change.field[:50])
                else:
                    values.append((f"entry.{i}.changes.{j}.value", entry, change.value))
        expected = ctx.channel.config.get("phone_number_id")
        if expected and any(v.metadata.phone_number_id != str(expected) for _, _, v in values):
            raise ChannelMismatch("payload for another phone number than the channel's")
        if sum(len(v.messages) + len(v.statuses) for _, _, v in values) > MAX_UPDATES:
            raise UnprocessablePayload(f"more than {MAX_UPDATES} updates in one request")
        events: list[Event] = []
        kept: list[KeptElement] = []
        skipped: list[str] = []
        for where, entry, value in values:
            events += self._events(ctx, where, entry, value, skipped, kept)
        notes = [f"changes of other fields {sorted(other_fields)}"] if other_fields else []
        if skipped:
            notes.append(f"{len(skipped)} status(es) of unsupported kind {sorted(set(skipped))}")
        if not events and not notes and not kept:
            notes.append("no messages or statuses")
        return WebhookResult(events=events, ignored="; ".join(notes)[:500] or None, kept=kept)

    @staticmethod
    def _verify(request: RawRequest, channel: Channel) -> None:
        given = request.header(SIGNATURE_HEADER)
        if given is None:
            raise Unauthorized(f"missing {SIGNATURE_HEADER}")
        if (match := _SIGNATURE_RE.fullmatch(given)) is None:
            raise Unauthorized(f"malformed {SIGNATURE_HEADER}")
        secrets = channel.secrets("app_secret")
        # A channel without a secret would accept anyone: refuse rather than trust.
        digests = (hmac.new(utf8(s), request.body, hashlib.sha256).digest() for s in secrets)
        if not secrets or not matches_any(bytes.fromhex(match.group(1)), digests):
            raise Unauthorized("invalid signature")

    def _events(
        self,
        ctx: ParseContext,
        where: str,
        entry: _Entry,
        value: _Value,
        skipped: list[str],
        kept: list[KeptElement],
    ) -> list[Event]:
        md = value.metadata
        business = {"phone_number_id": md.phone_number_id, "waba_id": entry.id}
        business |= _some({"display_phone_number": md.display_phone_number})
        contacts, events = _contacts(value.contacts), list[Event]()

        def keep(key: str, k: int, exc: UnprocessablePayload | ValidationError) -> None:
            at = f"{where}.{key}.{k}"
            if isinstance(exc, ValidationError):
                exc = UnprocessablePayload(validation_reason(exc, "body", at))
            else:
                exc = type(exc)(f"{at}: {exc.reason}")
            kept.append(_kept(entry, value, key, getattr(value, key)[k], at, exc))

        for k, raw in enumerate(value.messages):
            try:
                msg = _Message.model_validate(raw)
                if (found := _sender(msg, contacts)) is None:
                    raise NoSender("message names no sender (from / user_id)")
                sender, member_meta = found
                member = _some(member_meta) | business
                events.append(self._message(ctx, msg, value, sender, member))
            except (ValidationError, UnprocessablePayload) as exc:
                keep("messages", k, exc)
        for k, raw in enumerate(value.statuses):
            try:
                status = _Status.model_validate(raw)
                if status.status not in _STATUSES:
                    skipped.append(status.status[:50])
                    continue
                events.append(_status_event(ctx, status, business))
            except ValidationError as exc:
                keep("statuses", k, exc)
        return events

    def _message(
        self,
        ctx: ParseContext,
        msg: _Message,
        value: _Value,
        sender: Sender,
        member: dict[str, Any],
    ) -> MessageEvent:
        meta: dict[str, Any] = {"type": msg.type}
        parts: Mapping[str, Any] = msg.model_extra or {}
        event_type: Literal["message.received", "message.edited"] = "message.edited"
        original = _at(parts.get(msg.type), "original_message_id")
        if not original or len(original) > 512 or msg.type not in ("edit", "revoke"):
            # Also an edit or revoke without the original's id: recorded, not lost.
            event_type, original = "message.received", msg.id
            text, attachments = _render(msg.type, parts, self.default_region, meta)
        elif msg.type == "edit":
            # The new content is a message without ids: `{"type": "image", "image": {...}}`.
            inner = _at(parts["edit"], "message", dict) or {}
            meta |= {"wamid": msg.id, "content_type": _at(inner, "type") or "unsupported"}
            text, attachments = _render(meta["content_type"], inner, self.default_region, meta)
            parts = {**parts, "context": parts.get("context") or inner.get("context")}
        else:
            meta |= {"wamid": msg.id, "revoked": True}
            text, attachments = DELETED, []
        extra = {
            "context": _context(parts.get("context")),
            "errors": _errors(parts.get("errors")) or _errors(value.errors),
            "referral": _strs(parts.get("referral"), *_REFERRAL) or None,
            "group_id": _at(parts, "group_id"),
        }
        version = msg.timestamp * 1000
        return MessageEvent(
            **ctx.envelope("whatsapp", sender.contact_value, msg.id, event_type, version),
            event_type=event_type,
            external_message_id=original,
            version=version,
            sent_at=utc_from_unix(msg.timestamp),
            edited_at=utc_from_unix(msg.timestamp) if event_type == "message.edited" else None,
            sender=sender,
            text=text,
            attachments=attachments,
            member_meta=member,
            message_meta=meta | _some(extra),
        )

    def channel_config(
        self, given: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_config("whatsapp", CONFIG_KEYS, given, current)
