"""Reading an RFC 5322 message that may be hostile: every header and part access degrades
instead of raising, a header block broken by one bad line is repaired, and what a message
carries is reduced to `_Mail` (headers kept, text, files with their bytes)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
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
from typing import Any, TypeVar, cast

from ingest.errors import (
    BadPayload,
)
from ingest.identity import normalize_email
from ingest.transports.base import (
    KeptElement,
)

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
