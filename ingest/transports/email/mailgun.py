"""Mailgun's Routes `forward()` posts: form fields or multipart `attachment-N` files (each
file's bytes exactly as posted), `body-mime`, and Mailgun's own signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from ingest.errors import (
    BadPayload,
    Unauthorized,
)
from ingest.transports.base import (
    KeptElement,
    RawRequest,
    matches_any,
    utf8,
)
from ingest.transports.email.mime import (
    _KEPT,
    _NAME_MAX,
    _POLICY,
    _TIMESTAMP_RE,
    MAILGUN_MAX_AGE_S,
    MAX_ATTACHMENTS,
    _clean,
    _File,
    _Mail,
    _safe,
    _unreadable,
    html_to_text,
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


def _form(request: RawRequest) -> _Form:
    if request.media_type == "multipart/form-data":
        return _multipart(request.header("content-type") or "", request.body)
    return _urlencoded(request.body)
