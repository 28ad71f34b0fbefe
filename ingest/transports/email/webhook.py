"""Inbound email: a raw RFC 5322 message, or a Mailgun Routes `forward()` post -> one event.

Two ways in, both checked before anything in the message is used:

- `Content-Type: message/rfc822` with `Authorization: Bearer <token>` (any relay or MTA hook);
- a Mailgun form post (`application/x-www-form-urlencoded` or `multipart/form-data`), either
  with the bearer token or, when the channel has a `signing_key`, with Mailgun's own signature
  (hex HMAC-SHA256 of `timestamp + token`) and a timestamp no more than 15 minutes off.

Email is hostile input: the stdlib parser never raises on garbage, but reading its headers and
parts can, so every access goes through a helper that degrades instead of failing. Attachments
are described (name, type, size) but their bytes are not kept in the event nor stored.

A real email is never refused for what can be recovered: a header block broken by one bad line
is repaired, a missing From falls back to Reply-To, Sender (or Mailgun's `sender` field) and says
so in `message_meta.sender_fallback`, a date before 1970 is kept. An email with no sender at all
is `NoSender`, which the gateway keeps as a dead letter rather than answering 4xx (providers
drop mail on a 4xx). Reasons name what is wrong with the email, never an internal field.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors as email_errors
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import parseaddr, parsedate_to_datetime
from html import unescape
from html.parser import HTMLParser
from itertools import islice
from typing import Any, ClassVar, Literal, TypeVar, cast
from urllib.parse import parse_qsl

from pydantic import ValidationError

from ingest.errors import (
    BadPayload,
    NoSender,
    Unauthorized,
    UnprocessablePayload,
)
from ingest.events import Attachment, MessageEvent, Sender
from ingest.identity import normalize_email
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

RFC822 = "message/rfc822"
RAW_REF_PREFIX = "email:"  # placeholders the gateway replaces with stored objects' URLs
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
MAILGUN_MAX_AGE_S = 15 * 60
MAX_ATTACHMENTS = 100
MAX_REFERENCES = 100
_ID_MAX = 512
_NAME_MAX = 255
_MSGID_RE = re.compile(r"<([^<>]+)>")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{1,512}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_KEPT = (
    "From",
    "Reply-To",
    "Sender",
    "Subject",
    "Message-ID",
    "Date",
    "In-Reply-To",
    "References",
    "To",
    "Cc",
)
# Who sent it when From is missing or unreadable, in this order (RFC 5322 3.6.2: Sender is the
# agent that sent it on the author's behalf; Reply-To is where the author wants answers).
_SENDER_FALLBACKS = ("Reply-To", "Sender")
_HEADER_LINE_RE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:|^[ \t]")  # a field or a folded line
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
_T = TypeVar("_T")
# The stdlib header parser is superlinear (seconds for a 200 KB Subject of encoded words), and a
# 25 MB body could hold one such header per MIME part: nothing beyond this is parsed.
HEADER_PARSE_MAX = 8192
_RAW_HEADERS = frozenset({"message-id", "in-reply-to", "references"})  # read with a regex


class _Policy(EmailPolicy):
    """`email.policy.default`, except that a header is cut before the structured parser."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if isinstance(value, str) and len(value) > HEADER_PARSE_MAX:
            value = value[:HEADER_PARSE_MAX]
        return super().header_fetch_parse(name, value)


# Typed as what it builds (EmailMessage): the stubs' bare EmailPolicy means Message.
_POLICY = cast("EmailPolicy[EmailMessage]", _Policy())


def _clean(value: object) -> str:
    """Text that serializes: surrogate-escaped bytes decoded as UTF-8, other surrogates replaced."""
    text = value if isinstance(value, str) else str(value)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _safe(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
    """The stdlib email API raises on malformed input in many places; none of it is fatal."""
    try:
        return call(*args, **kwargs)
    except Exception:
        return None


def _drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "", [], {})}


class _HtmlText(HTMLParser):
    _SKIP = frozenset({"script", "style"})
    _BLOCK = frozenset({"p", "div", "li", "tr", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BLOCK or tag in ("br", "hr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))  # source line breaks are just spaces


def html_to_text(html: str) -> str:
    """Readable text from an HTML body: no scripts or styles, blocks on their own lines."""
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # last resort for input the parser chokes on
        text = unescape(re.sub(r"<[^>]*>", " ", html))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _msgids(raw: str | None) -> list[str]:
    """The `<msg-id>`s of a Message-ID, In-Reply-To or References value, without brackets."""
    ids = ("".join(m.split()) for m in _MSGID_RE.findall(raw or ""))
    return [i for i in ids if i]


def _message_id(raw: str | None) -> str | None:
    ids = _msgids(raw)
    value = ids[0] if ids else "".join((raw or "").split()).strip("<>")
    return value or None


def _address(raw: str | None) -> tuple[str, str] | None:
    """(normalized address, display name) of the first usable mailbox in a From value."""
    if not raw:
        return None
    raw = raw[:HEADER_PARSE_MAX]
    header = _safe(_POLICY.header_factory, "from", raw)
    mailboxes: list[tuple[str, str]] = []
    if header is not None:
        mailboxes = _safe(lambda: [(a.addr_spec, a.display_name) for a in header.addresses]) or []
    name, addr = parseaddr(raw)
    for spec, display in [*mailboxes, (addr, name)]:
        address = normalize_email(_clean(spec))
        if address:
            return address, _clean(display or "")
    return None


def _date(raw: str | None) -> datetime | None:
    def parse() -> datetime:
        moment = parsedate_to_datetime(raw or "")
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)

    return _safe(parse) if raw else None


@dataclass(slots=True)
class _File:
    filename: str | None
    mime_type: str | None
    size: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None  # decoded bytes: the gateway stores them (never dropped)


@dataclass(slots=True)
class _Mail:
    """What every input format is reduced to before the event is built."""

    format: str
    headers: dict[str, str | None]  # the _KEPT headers, decoded
    text: str
    fallback_id: str  # "sha256:<hex>" of the raw message (or of the parsed fields)
    files: list[_File] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    sender_field: str | None = None  # Mailgun's envelope `sender`, the last fallback
    raw: bytes | None = None  # the whole RFC 5322 message, when the webhook carried it
    kept: list[KeptElement] = field(default_factory=list)  # attachments that cannot be read


def _header(msg: Message, name: str) -> str | None:
    """A decoded header value (first occurrence), or the raw one when decoding fails."""
    raw = _safe(lambda: next(v for k, v in msg.raw_items() if k.lower() == name.lower()))
    if raw is None:
        return None
    if name.lower() in _RAW_HEADERS:
        return _clean(raw)
    value = _safe(msg.get, name)
    text = _safe(str, value) if value is not None else None
    return _clean(raw if text is None else text)[:HEADER_PARSE_MAX]


def _part_text(part: EmailMessage) -> str:
    content = _safe(part.get_content)  # decodes the transfer encoding and the charset
    if isinstance(content, str):
        return _clean(content)
    payload = _safe(part.get_payload, decode=True)
    return _clean(payload.decode("utf-8", "replace")) if isinstance(payload, bytes) else ""


def _mime_text(msg: EmailMessage) -> str:
    plain = _safe(msg.get_body, preferencelist=("plain",))
    if isinstance(plain, EmailMessage):
        return _part_text(plain)
    html = _safe(msg.get_body, preferencelist=("html",))
    return html_to_text(_part_text(html)) if isinstance(html, EmailMessage) else ""


def _parts(msg: EmailMessage) -> list[EmailMessage] | None:
    """The attachment parts; an email that is only an attachment (one non-multipart part with
    `Content-Disposition: attachment`) is its own one attachment."""
    if not _safe(msg.is_multipart) and _safe(msg.get_content_disposition) == "attachment":
        return [msg]
    return _safe(lambda: list(islice(msg.iter_attachments(), MAX_ATTACHMENTS + 1)))


def _mime_files(msg: EmailMessage, errors: list[str]) -> list[_File]:
    parts = _parts(msg)
    if parts is None:
        errors.append("attachments: unreadable MIME structure")
        return []
    if len(parts) > MAX_ATTACHMENTS:
        errors.append(f"attachments: more than {MAX_ATTACHMENTS}, the rest skipped")
    files = []
    for part in parts[:MAX_ATTACHMENTS]:
        filename = _safe(part.get_filename)
        payload = _safe(part.get_payload, decode=True)
        meta = {
            "content_id": _header(part, "Content-ID"),
            "disposition": _safe(part.get_content_disposition),
        }
        files.append(
            _File(
                filename=_clean(filename)[:_NAME_MAX] if filename else None,
                mime_type=_safe(part.get_content_type),
                size=len(payload) if isinstance(payload, bytes) else None,
                meta=_drop_empty(meta),
                data=payload if isinstance(payload, bytes) else None,
            )
        )
    return files


def _parse_mime(raw: bytes) -> EmailMessage:
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(raw)
    except Exception as exc:
        raise BadPayload("unparseable email message") from exc
    assert isinstance(msg, EmailMessage)  # what an EmailPolicy builds
    return msg


def _repaired(raw: bytes) -> bytes | None:
    """The message without the lines that broke its header block, or None when there are none.

    The stdlib ends the headers at the first line that is neither a field nor a folded line,
    so one bad line above `From:` turns every header below it into body text."""
    end = _BLANK_LINE_RE.search(raw)
    head, rest = (raw[: end.start()], raw[end.start() :]) if end else (raw, b"")
    lines = head.splitlines(keepends=True)
    kept = [line for line in lines if _HEADER_LINE_RE.match(line)]
    return b"".join(kept) + rest if len(kept) < len(lines) else None


def _from_mime(raw: bytes, fmt: str) -> _Mail:
    msg = _parse_mime(raw)
    errors: list[str] = []
    broken = any(
        isinstance(d, email_errors.MissingHeaderBodySeparatorDefect)
        for d in _safe(lambda: msg.defects) or []
    )
    if broken and (repaired := _repaired(raw)) is not None:
        msg = _parse_mime(repaired)
        errors.append("headers: malformed lines skipped")
    return _Mail(
        format=fmt,
        headers={name: _header(msg, name) for name in _KEPT},
        text=_mime_text(msg),
        fallback_id="sha256:" + hashlib.sha256(raw).hexdigest(),
        files=_mime_files(msg, errors),
        errors=errors,
        raw=raw,
    )


def _unreadable(part: MIMEPart, payload: object) -> bool:
    defects = _safe(lambda: part.defects) or []
    return not isinstance(payload, bytes) or any(
        isinstance(
            d, email_errors.InvalidBase64CharactersDefect | email_errors.InvalidBase64PaddingDefect
        )
        for d in defects
    )


# --- Mailgun --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Form:
    fields: dict[str, str]
    files: list[_File] = field(default_factory=list)
    mime: bytes | None = None  # `body-mime`, exactly as posted
    kept: list[KeptElement] = field(default_factory=list)


def _urlencoded(body: bytes) -> _Form:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="surrogateescape")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPayload("form body is not valid UTF-8") from exc
    raw: dict[str, str] = {}
    for name, value in pairs:
        raw.setdefault(name, value)
    mime = raw.get("body-mime")
    fields = {_clean(k): _clean(v) for k, v in raw.items()}
    return _Form(fields, mime=mime.encode("utf-8", "surrogateescape") if mime is not None else None)


def _field_name(part: EmailMessage) -> Any:
    return part["content-disposition"].params.get("name")


def _multipart(content_type: str, body: bytes) -> _Form:
    """multipart/form-data read with the stdlib MIME parser under a synthetic header."""
    if "\r" in content_type or "\n" in content_type:
        raise BadPayload("malformed Content-Type")
    head = b"Content-Type: " + content_type.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(head + body)
        parts = list(msg.iter_parts()) if msg.is_multipart() else None
    except Exception as exc:
        raise BadPayload("malformed multipart/form-data body") from exc
    if not parts:
        raise BadPayload("malformed multipart/form-data body")
    form = _Form(fields={})
    boundary = _safe(msg.get_boundary)
    raw_parts = _raw_parts(body, boundary) if isinstance(boundary, str) else []
    for index, part in enumerate(parts):
        name = _safe(_field_name, part)
        filename = _safe(part.get_filename)
        payload = _safe(part.get_payload, decode=True)
        if payload is None and _safe(part.get_content_maintype) == "message":
            # A forwarded message (message/rfc822) is parsed as a nested message, not bytes:
            # its bytes are taken as posted.
            payload = raw_parts[index] if index < len(raw_parts) else None
        data = payload if isinstance(payload, bytes) else b""
        if filename is not None:
            if len(form.files) < MAX_ATTACHMENTS:
                mime = _safe(part.get_content_type)
                name_ = _clean(filename)[:_NAME_MAX] or None
                if _unreadable(part, payload):
                    form.kept.append(_kept_part(part, len(form.files) + len(form.kept), name_))
                else:
                    form.files.append(_File(name_, mime, len(data), data=data))
        elif isinstance(name, str) and name not in form.fields:
            form.fields[_clean(name)] = _clean(data.decode("utf-8", "replace"))
            if name == "body-mime":
                form.mime = data
    return form


def _raw_parts(body: bytes, boundary: str) -> list[bytes]:
    """The bodies of a multipart's parts exactly as posted (their headers cut off)."""
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0]
    chunks[0] = first[first.find(delimiter) + len(delimiter) :] if delimiter in first else b""
    bodies = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        _, sep, content = chunk.partition(b"\r\n\r\n")
        bodies.append(content if sep else b"")
    return bodies


def _kept_part(part: MIMEPart, index: int, filename: str | None) -> KeptElement:
    raw = _safe(part.as_bytes) or b""
    return KeptElement(
        body=raw,
        content_type="application/octet-stream",
        element=f"attachment.{index}",
        reason=f"attachment {index} ({filename or 'unnamed'}) cannot be decoded",
        reason_kind="unreadable_attachment",
    )


def _verify_mailgun(form: _Form, keys: Sequence[str], now: datetime) -> None:
    fields = form.fields
    timestamp, token, signature = (fields.get(k) for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and signature):
        raise Unauthorized("missing Mailgun signature")
    signed = (timestamp + token).encode()
    expected = (hmac.new(utf8(k), signed, hashlib.sha256).hexdigest().encode() for k in keys)
    if not matches_any(signature.strip().lower().encode(), expected):
        raise Unauthorized("invalid Mailgun signature")
    # Replay window: a captured post stops working after 15 minutes (tokens are not cached).
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise Unauthorized("invalid Mailgun timestamp")
    if abs(now.timestamp() - float(timestamp)) > MAILGUN_MAX_AGE_S:
        raise Unauthorized("stale Mailgun timestamp")


def _header_pairs(raw: str | None) -> list[tuple[str, str]]:
    """Mailgun's `message-headers`: a JSON list of [name, value]; anything else is skipped."""
    data = _safe(json.loads, raw or "[]")
    if not isinstance(data, list):
        return []
    pairs = [p for p in data if isinstance(p, list | tuple) and len(p) == 2]
    return [(n, v) for n, v in pairs if isinstance(n, str) and isinstance(v, str)]


def _from_mailgun(form: _Form) -> _Mail:
    fields = form.fields
    headers = _header_pairs(fields.get("message-headers"))

    def header(name: str) -> str | None:
        found = next((v for n, v in headers if n.lower() == name.lower()), None)
        return found if found is not None else fields.get(name)

    html = fields.get("body-html") or fields.get("stripped-html")
    text = fields.get("body-plain") or fields.get("stripped-text") or ""
    # No Message-Id: the id must still be the same on every retry of the same post, and the
    # signature fields change between retries, so hash only what describes the message.
    stable = [fields.get(k) for k in ("from", "subject", "body-plain", "message-headers")]
    digest = hashlib.sha256(json.dumps(stable).encode()).hexdigest()
    kept = {name: header(name) for name in _KEPT}
    # The top-level fields are Mailgun's decoded versions of the headers.
    kept["From"] = fields.get("from") or kept["From"]
    kept["Subject"] = fields.get("subject") or kept["Subject"]
    return _Mail(
        format="mailgun",
        headers=kept,
        text=text or (html_to_text(html) if html else ""),
        fallback_id="sha256:" + digest,
        files=form.files,
        sender_field=fields.get("sender"),
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


def _form(request: RawRequest) -> _Form:
    if request.media_type == "multipart/form-data":
        return _multipart(request.header("content-type") or "", request.body)
    return _urlencoded(request.body)


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
