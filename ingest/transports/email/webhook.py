"""Inbound email: a raw RFC 5322 message, or a Mailgun Routes `forward()` post -> one event.

Two ways in, both checked before anything in the message is used:

- `Content-Type: message/rfc822` with `Authorization: Bearer <token>` (any relay or MTA hook);
- a Mailgun form post (`application/x-www-form-urlencoded` or `multipart/form-data`), either
  with the bearer token or, when the channel has a `signing_key`, with Mailgun's own signature
  (hex HMAC-SHA256 of `timestamp + token`) and a timestamp no more than 15 minutes off.

Email is hostile input: the stdlib parser never raises on garbage, but reading its headers and
parts can, so every access goes through a helper that degrades instead of failing (mime.py;
Mailgun's form posts in mailgun.py). An attachment's bytes, and the raw message, leave as
`Blob`s: the gateway stores them before it publishes, and the event carries their URLs.

A real email is never refused for what can be recovered: a header block broken by one bad line
is repaired, a missing From falls back to Reply-To, Sender (or Mailgun's `sender` field) and says
so in `message_meta.sender_fallback`, a date before 1970 is kept. An email with no sender at all
is `NoSender`, which the gateway keeps as a dead letter rather than answering 4xx (providers
drop mail on a 4xx). Reasons name what is wrong with the email, never an internal field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import ValidationError

from ingest.errors import (
    BadPayload,
    NoSender,
    Unauthorized,
    UnprocessablePayload,
)
from ingest.events import Attachment, MessageEvent, Sender
from ingest.transports.base import (
    Blob,
    Channel,
    KeptElement,
    ParseContext,
    RawRequest,
    VerifyThenParse,
    WebhookResult,
    matches_any,
    utf8,
)
from ingest.transports.channel_keys import build_config
from ingest.transports.email.keys import CONFIG_KEYS
from ingest.transports.email.mailgun import (
    _Form,
    _form,
    _from_mailgun,
    _verify_mailgun,
)
from ingest.transports.email.mime import (
    _ID_MAX,
    _NAME_MAX,
    _SENDER_FALLBACKS,
    FORM_TYPES,
    MAX_REFERENCES,
    RAW_REF_PREFIX,
    RFC822,
    _address,
    _date,
    _drop_empty,
    _from_mime,
    _Mail,
    _message_id,
    _msgids,
)

# --- the adapter ----------------------------------------------------------------------------


def _bearer(request: RawRequest) -> str | None:
    scheme, _, token = (request.header("authorization") or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _check_bearer(given: str, channel: Channel) -> None:
    accepted = channel.secrets("token")
    # No secret configured: trust nobody.
    if not accepted or not matches_any(utf8(given), map(utf8, accepted)):
        raise Unauthorized("invalid bearer token")


def _sender(mail: _Mail) -> tuple[str, str, str | None]:
    """(address, display name, the field it came from when not From)."""
    candidates = [("From", mail.headers["From"])]
    candidates += [(name, mail.headers[name]) for name in _SENDER_FALLBACKS]
    candidates.append(("sender", mail.sender_field))  # Mailgun's envelope sender
    for name, raw in candidates:
        if (found := _address(raw)) is not None:
            return found[0], found[1], None if name == "From" else name
    raise NoSender("email has no sender address (From, Reply-To, Sender)")


def _blobs(mail: _Mail, event: MessageEvent) -> list[Blob]:
    """The bytes only this webhook carries, each under the reference its event holds."""
    blobs = [
        Blob(attachment.provider_ref, f.data, f.mime_type)
        for attachment, f in zip(event.attachments, mail.files, strict=True)
        if f.data is not None
    ]
    if mail.raw is not None:
        blobs.append(Blob(event.message_meta["raw_mime"], mail.raw, RFC822))
    return blobs


def _event(mail: _Mail, ctx: ParseContext) -> MessageEvent:
    headers = mail.headers
    address, display, fallback = _sender(mail)
    external_id = _message_id(headers["Message-ID"]) or mail.fallback_id
    if len(external_id) > _ID_MAX:
        external_id = "sha256:" + hashlib.sha256(external_id.encode()).hexdigest()
    subject = " ".join((headers["Subject"] or "").split())
    text = mail.text.replace("\r\n", "\n").strip() or f"[email] {subject}".rstrip()
    attachments = [
        Attachment(
            kind="file",
            provider_ref=f"{RAW_REF_PREFIX}{external_id}#{index}",
            filename=f.filename,
            mime_type=f.mime_type,
            size_bytes=f.size,
            meta=f.meta,
        )
        for index, f in enumerate(mail.files)
    ]
    in_reply_to = _msgids(headers["In-Reply-To"])
    message_meta = {
        "format": mail.format,
        "subject": subject,
        "in_reply_to": in_reply_to[0] if in_reply_to else None,
        "references": _msgids(headers["References"])[:MAX_REFERENCES],
        "to": headers["To"],
        "cc": headers["Cc"],
        **mail.extra,
        "sender_fallback": fallback,
        "attachment_errors": mail.errors,
        # The message as received, stored by the gateway (its URL replaces this reference).
        "raw_mime": f"{RAW_REF_PREFIX}{external_id}#raw" if mail.raw is not None else None,
    }
    sent = _date(headers["Date"])
    # The member keeps the thread of the newest email (transport_meta merges newer versions
    # only, so the Date header is the version; without one the first email's thread stays).
    thread = {
        "email": address,
        "subject": subject,
        "message_id": external_id,
        "in_reply_to": message_meta["in_reply_to"],
        "references": message_meta["references"],
    }
    return MessageEvent(
        **ctx.envelope("email", address, external_id),
        event_type="message.received",
        external_message_id=external_id,
        # Versions order a member's meta and start at 0: an email dated before 1970 is 0.
        version=max(0, int(sent.timestamp() * 1000)) if sent else 0,
        sent_at=sent or ctx.received_at,
        sender=Sender(
            contact_type="email",
            contact_value=address,
            first_name=(display.strip() or address.split("@")[0] or address)[:_NAME_MAX],
            email=address,
            name_is_placeholder=not display.strip(),
        ),
        text=text,
        attachments=attachments,
        member_meta=_drop_empty(thread),
        message_meta=_drop_empty(message_meta),
    )


class EmailAdapter(VerifyThenParse):
    transport: ClassVar[Literal["email"]] = "email"

    def __init__(self, default_region: str | None = None) -> None:
        self.default_region = default_region  # unused by email; kept for a uniform constructor

    def verify(self, request: RawRequest, ctx: ParseContext) -> _Form | None:
        """The bearer token; or Mailgun's signature, whose fields are in the form (returned,
        so that `parse` does not decode it twice)."""
        signing_keys = ctx.channel.secrets("signing_key")
        bearer = _bearer(request)
        if bearer is not None:
            _check_bearer(bearer, ctx.channel)
            return None
        if not (signing_keys and request.media_type in FORM_TYPES):
            raise Unauthorized("missing bearer token")
        try:
            form = _form(request)
        except BadPayload as exc:
            raise Unauthorized("missing Mailgun signature") from exc  # unverifiable
        _verify_mailgun(form, signing_keys, ctx.received_at)
        return form

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        media = request.media_type
        kept: list[KeptElement] = []
        if media == RFC822:
            mail = _from_mime(request.body, "rfc822")
        elif media in FORM_TYPES:
            form = verified if isinstance(verified, _Form) else _form(request)
            mail = _from_mailgun(form) if form.mime is None else _from_mime(form.mime, "mailgun")
            mail.extra["recipient"] = form.fields.get("recipient")
            mail.sender_field = mail.sender_field or form.fields.get("sender")
            kept = form.kept
            if kept:
                mail.errors.append(f"attachments: {len(kept)} unreadable, kept as dead letters")
        else:
            raise BadPayload("expected message/rfc822 or a Mailgun form post")
        try:
            event = _event(mail, ctx)
        except ValidationError as exc:
            # The helpers above should make this unreachable; it is the last translation point,
            # and its reason says what is wrong with the email, not which model field refused it.
            raise UnprocessablePayload("email cannot be read as a message") from exc
        return WebhookResult(events=[event], kept=kept, blobs=_blobs(mail, event))

    def channel_config(
        self, given: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_config("email", CONFIG_KEYS, given, current)
