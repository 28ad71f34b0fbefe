"""Twilio Programmable Messaging webhooks: inbound SMS/MMS and outbound status callbacks.

Twilio posts `application/x-www-form-urlencoded` fields and signs them in `X-Twilio-Signature`:
base64(HMAC-SHA1(auth_token, url + sorted name+value pairs)). The form has to be decoded to
compute the signature, but nothing in it is used before the signature matches. One request is
at most one event: an inbound message (`MessageSid`, no `MessageStatus`) or a status callback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import ValidationError

from ingest.errors import Unauthorized, UnprocessablePayload
from ingest.events import (
    Attachment,
    MessageEvent,
    MessageStatus,
    Sender,
    StatusEvent,
)
from ingest.identity import normalize_phone
from ingest.transports.base import (
    ParseContext,
    RawRequest,
    VerifyThenParse,
    WebhookResult,
    matches_any,
    utf8,
)
from ingest.transports.channel_keys import build_config
from ingest.transports.sms.keys import CONFIG_KEYS

SIGNATURE_HEADER = "X-Twilio-Signature"
FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio reads the answer to an inbound message as TwiML; an empty Response sends no reply.
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_MEDIA = 10  # Twilio's own limit per MMS; also bounds the loop over a forged NumMedia
_NAME_MAX = 255
_ID_MAX = 512

_STATUSES: dict[str, MessageStatus] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "failed": "failed",
    "undelivered": "failed",
}
# Intermediate states: nothing the CRM shows, so they are acknowledged and dropped.
_IGNORED_STATUSES = frozenset(
    {"queued", "accepted", "sending", "scheduled", "canceled", "receiving", "received"}
)
_GEO = {
    "FromCity": "from_city",
    "FromState": "from_state",
    "FromCountry": "from_country",
    "FromZip": "from_zip",
}


def _drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "", [], {})}


def _small_int(raw: str) -> int | None:
    """A non-negative decimal of at most 9 digits (int() refuses huge digit strings anyway)."""
    text = raw.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


def _url_variants(url: str) -> list[str]:
    """The URL as given, with the scheme's default port added, and with any port removed.

    twilio-python's `validate` accepts either, "since sig generation on back end is
    inconsistent"; unlike its `remove_port`, userinfo and IPv6 brackets are kept intact.
    """
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return variants
    host_end = parts.netloc.rfind("]") + 1  # IPv6 literals contain colons of their own
    if port is None:
        default = 443 if parts.scheme == "https" else 80
        variants.append(urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}")))
    else:
        cut = parts.netloc.rfind(":", host_end)
        variants.append(urlunsplit(parts._replace(netloc=parts.netloc[:cut])))
    return variants


def compute_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's signature: url, then each name (sorted) with each of its values (sorted)."""
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    data = url + "".join(name + v for name in sorted(by_name) for v in sorted(by_name[name]))
    key = auth_token.encode("utf-8", "surrogatepass")
    mac = hmac.new(key, data.encode("utf-8", "surrogatepass"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _decode_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        # The signature covers the decoded parameters: a body that does not decode cannot be
        # verified, so it is refused as unauthenticated (and never kept).
        raise Unauthorized("invalid signature: form body is not valid UTF-8") from exc


def _verify(request: RawRequest, ctx: ParseContext) -> list[tuple[str, str]]:
    """The form parameters, once the signature over them is known to be Twilio's."""
    given = request.header(SIGNATURE_HEADER)
    if given is None:
        raise Unauthorized(f"missing {SIGNATURE_HEADER}")
    tokens = ctx.channel.secrets("auth_token")
    if not tokens:
        raise Unauthorized("invalid signature")  # no secret configured: trust nobody
    if request.media_type != FORM_TYPE:
        raise Unauthorized(f"invalid signature: only {FORM_TYPE} bodies can be verified")
    params = _decode_form(request.body)
    public_url = ctx.channel.config.get("public_url")
    url = public_url if isinstance(public_url, str) and public_url else request.url
    expected = (
        compute_signature(token, candidate, params).encode()
        for token in tokens
        for candidate in _url_variants(url)
    )
    if not matches_any(utf8(given.strip()), expected):
        raise Unauthorized("invalid signature")
    return params


def _phone(raw: str, default_region: str | None) -> tuple[str, str | None, bool]:
    """(identity, E.164 or None, is WhatsApp) for a Twilio `From`/`To` value."""
    value = raw.strip()
    whatsapp = value.lower().startswith("whatsapp:")
    if whatsapp:
        value = value.split(":", 1)[1].strip()
    e164 = normalize_phone(value, default_region)
    return e164 or value or raw, e164, whatsapp


def _media(fields: Mapping[str, str], errors: list[str]) -> list[Attachment]:
    raw = fields.get("NumMedia", "").strip() or "0"
    parsed = _small_int(raw)
    lenient = parsed is None
    if parsed is None:
        errors.append(f"NumMedia: not an integer: {raw[:40]!r}")
        count = MAX_MEDIA  # still collect whatever MediaUrlN fields are present
    else:
        count = parsed
        if count > MAX_MEDIA:
            errors.append(f"NumMedia: {count} is more than {MAX_MEDIA}")
            count = MAX_MEDIA
    attachments: list[Attachment] = []
    for index in range(count):
        url = fields.get(f"MediaUrl{index}", "").strip()
        if not url:
            if not lenient:
                errors.append(f"MediaUrl{index}: missing")
            continue
        mime = fields.get(f"MediaContentType{index}", "").strip() or None
        attachments.append(Attachment(kind="media", provider_ref=url, mime_type=mime))
    return attachments


def _location(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """Twilio WhatsApp location pins: Latitude/Longitude (+ Address, Label)."""
    try:
        lat, lon = float(fields["Latitude"]), float(fields["Longitude"])
    except (KeyError, ValueError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    place = {"address": fields.get("Address"), "label": fields.get("Label")}
    return {"latitude": lat, "longitude": lon, **_drop_empty(place)}


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise UnprocessablePayload(f"missing {name}")
    if len(value) > _ID_MAX:
        raise UnprocessablePayload(f"{name} is too long")
    return value


class TwilioSmsAdapter(VerifyThenParse):
    transport: ClassVar[Literal["sms"]] = "sms"
    accepted_body: ClassVar[tuple[bytes, str]] = (TWIML_EMPTY, "application/xml")

    def __init__(self, default_region: str | None = None) -> None:
        self.default_region = default_region

    def verify(self, request: RawRequest, ctx: ParseContext) -> list[tuple[str, str]]:
        return _verify(request, ctx)

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        # Replay passes no `verified`: the form is decoded again (it was verified at receipt).
        params = verified if verified is not None else _decode_form(request.body)
        fields: dict[str, str] = {}
        for name, value in params:
            fields.setdefault(name, value)  # a repeated name: the first value counts
        status = fields.get("MessageStatus") or None
        try:
            if status is None or fields.get("SmsStatus") == "received":
                event: MessageEvent | StatusEvent = self._message(fields, request, ctx)
            elif status in _STATUSES:
                event = self._status(fields, _STATUSES[status], ctx)
            else:
                known = status in _IGNORED_STATUSES
                reason = f"{'' if known else 'unknown '}MessageStatus: {status[:40]}"
                return WebhookResult(
                    events=[], body=TWIML_EMPTY, media_type="application/xml", ignored=reason
                )
        except ValidationError as exc:
            # The checks above should make this unreachable; it is the last translation point.
            err = exc.errors(include_url=False, include_input=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise UnprocessablePayload(f"{loc}: {err['msg']}"[:200]) from exc
        return WebhookResult(events=[event], body=TWIML_EMPTY, media_type="application/xml")

    def _message(
        self, fields: Mapping[str, str], request: RawRequest, ctx: ParseContext
    ) -> MessageEvent:
        sid = _required(fields, "MessageSid")
        raw_from = _required(fields, "From")
        identity, e164, whatsapp = _phone(raw_from, self.default_region)
        if len(identity) > _NAME_MAX:
            raise UnprocessablePayload("From is too long")
        profile = fields.get("ProfileName", "").strip()
        sender = Sender(
            contact_type="phone",
            contact_value=identity,
            first_name=profile[:_NAME_MAX] or identity,
            phone_e164=e164,
            name_is_placeholder=not profile,
        )
        member_meta = _drop_empty(
            {
                "phone": e164,
                "raw_from": raw_from,
                "to": fields.get("To"),
                "account_sid": fields.get("AccountSid"),
                "messaging_service_sid": fields.get("MessagingServiceSid"),
                "channel": "whatsapp" if whatsapp else None,
                "wa_id": fields.get("WaId"),
            }
        )
        errors: list[str] = []
        attachments = _media(fields, errors)
        geo = {key: fields.get(name) for name, key in _GEO.items()}
        message_meta = _drop_empty(
            {
                **geo,
                "num_segments": _small_int(fields.get("NumSegments", "")),
                "location": _location(fields),
                "idempotency_token": request.header("I-Twilio-Idempotency-Token"),
                "attachment_errors": errors,
            }
        )
        return MessageEvent(
            **ctx.envelope("sms", identity, sid),
            event_type="message.received",
            external_message_id=sid,
            version=0,  # an SMS is never edited
            sent_at=ctx.received_at,  # Twilio sends no timestamp with an inbound message
            sender=sender,
            text=fields.get("Body", ""),
            attachments=attachments,
            member_meta=member_meta,
            message_meta=message_meta,
        )

    def _status(
        self, fields: Mapping[str, str], status: MessageStatus, ctx: ParseContext
    ) -> StatusEvent:
        sid = _required(fields, "MessageSid")
        # The customer of an outbound message is its `To`: the same identity as their inbound
        # `From`, so the receipt lands in the same conversation (partition) as the messages.
        identity, _, _ = _phone(_required(fields, "To"), self.default_region)
        meta = _drop_empty(
            {
                "provider_status": fields.get("MessageStatus"),
                "error_code": fields.get("ErrorCode"),
                "error_message": fields.get("ErrorMessage"),
                "to": fields.get("To"),
            }
        )
        return StatusEvent(
            **ctx.envelope("sms", identity[:_NAME_MAX], sid, status),
            event_type="message.status",
            external_message_id=sid,
            status=status,
            status_at=ctx.received_at,
            meta=meta,
        )

    def channel_config(
        self, given: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_config("sms", CONFIG_KEYS, given, current)
