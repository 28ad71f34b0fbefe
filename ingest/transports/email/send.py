"""Replies by email over SMTP with aiosmtplib (provider-apis.md §4.1).

`smtp_url` is `smtp://[user:password@]host[:port]` (port 587; STARTTLS when the server offers
it) or `smtps://…` (implicit TLS, port 465). The message carries the Message-ID the core
recorded before sending, and `In-Reply-To`/`References` of the conversation so it threads in
the client's mailbox, with `Re: <subject>`. Attachments are read from the object store (25 MB
in all, what common relays accept). The steps are sent one by one so a failure is placed:
before DATA nothing was accepted (4xx transient, 5xx rejected, 535 names the credentials);
a timeout or disconnect during DATA may have delivered it (unknown). The result holds the
Message-ID and the server's DATA reply, which names the relay's own id when it rewrites ours.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

import aiosmtplib

from ingest.config import Transport
from ingest.logs import get_logger
from ingest.transports.http_send import filename, stored_bytes
from ingest.transports.sending import (
    OutboundMessage,
    SendError,
    SendOutcomeUnknown,
    SendRejected,
    SendResult,
    SendTransient,
    check_shape,
    require_key,
)

if TYPE_CHECKING:
    from ingest.config import Settings
    from ingest.objectstore import ObjectStore

log = get_logger(__name__)

ATTACHMENTS_MAX = 25 * 1024 * 1024
MAX_ATTACHMENTS = 20
_SET_URL = "crm-ingest channel set <channel id> --config smtp_url=smtp://user:password@host:587"


def smtp_settings(smtp_url: str) -> dict[str, Any]:
    """aiosmtplib's connection keywords from the channel's `smtp_url`."""
    try:
        parts = urlsplit(smtp_url)
        port = parts.port
    except ValueError as exc:
        raise SendRejected("bad_channel_key", f"smtp_url is not a URL: run {_SET_URL}") from exc
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise SendRejected(
            "bad_channel_key", f"smtp_url must be smtp:// or smtps://host: run {_SET_URL}"
        )
    implicit_tls = parts.scheme == "smtps"
    return {
        "hostname": parts.hostname,
        "port": port or (465 if implicit_tls else 587),
        "use_tls": implicit_tls,
        "start_tls": False if implicit_tls else None,  # None: upgrade when offered
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def _classify(exc: aiosmtplib.SMTPResponseException, stage: str) -> SendError:
    log.info("smtp refused", stage=stage, code=exc.code)
    text = f"smtp {stage}: {exc.code} {exc.message}"[:300]
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or exc.code == 535:
        return SendRejected(
            str(exc.code), f"smtp login refused: fix the credentials in smtp_url: run {_SET_URL}"
        )
    if 400 <= exc.code < 500:
        return SendTransient(str(exc.code), text)
    return SendRejected(str(exc.code), text)


class EmailSender:
    transport: ClassVar[Transport] = "email"

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self._timeout = settings.outbound_timeout_s
        self._store = store

    def check(self, message: OutboundMessage, config: Mapping[str, Any]) -> None:
        smtp_settings(require_key(config, "smtp_url"))
        require_key(config, "from_address")
        check_shape(message, provider="email", max_attachments=MAX_ATTACHMENTS, max_bytes=None)
        if sum(a.size or 0 for a in message.attachments) > ATTACHMENTS_MAX:
            raise SendRejected("attachment_too_large", "attachments are over 25 MB in all")

    async def build(self, message: OutboundMessage, config: Mapping[str, Any]) -> EmailMessage:
        from_address = require_key(config, "from_address")
        email = EmailMessage(policy=SMTP)
        email["From"] = from_address
        email["To"] = message.to
        domain = parseaddr(from_address)[1].rpartition("@")[2] or None
        email["Message-ID"] = message.email_message_id or make_msgid(domain=domain)
        email["Date"] = formatdate(localtime=False, usegmt=True)
        thread = message.email_thread
        # One line: a subject folded or forged with CR/LF cannot add headers.
        subject = " ".join((thread.subject or "").split()) if thread is not None else ""
        if subject and not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
        first_line = " ".join((message.text or "").strip().split("\n")[0].split())
        email["Subject"] = subject or first_line[:78]
        if thread is not None and thread.in_reply_to:
            email["In-Reply-To"] = thread.in_reply_to
        if thread is not None and (thread.references or thread.in_reply_to):
            chain = list(thread.references)
            if thread.in_reply_to and thread.in_reply_to not in chain:
                chain.append(thread.in_reply_to)  # RFC 5322 §3.6.4: the parent comes last
            email["References"] = " ".join(chain)
        email.set_content(message.text or "")
        budget = ATTACHMENTS_MAX
        for attachment in message.attachments:
            data = await stored_bytes(self._store, attachment, budget)
            budget -= len(data)
            maintype, _, subtype = (attachment.mimetype or "application/octet-stream").partition(
                "/"
            )
            email.add_attachment(
                data,
                maintype=maintype,
                subtype=subtype or "octet-stream",
                filename=filename(attachment),
            )
        return email

    async def send(self, message: OutboundMessage, config: Mapping[str, Any]) -> SendResult:
        self.check(message, config)
        connection = smtp_settings(require_key(config, "smtp_url"))
        try:
            email = await self.build(message, config)
        except ValueError as exc:  # the email package refuses a header with CR/LF in it
            raise SendRejected(
                "bad_header", "a recipient or message id holds a line break"
            ) from exc
        envelope_from = parseaddr(str(email["From"]))[1]
        smtp = aiosmtplib.SMTP(timeout=self._timeout, **connection)
        stage = "connect"
        try:
            await smtp.connect()
            stage = "MAIL FROM"
            await smtp.mail(envelope_from)
            stage = "RCPT TO"
            await smtp.rcpt(parseaddr(message.to)[1] or message.to)
            stage = "DATA"
            reply = await smtp.data(email.as_bytes())
        except aiosmtplib.SMTPResponseException as exc:
            raise _classify(exc, stage) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            kind = type(exc).__name__
            if isinstance(exc.__cause__ or exc, ssl.SSLCertVerificationError):
                raise SendRejected(
                    "tls_certificate",
                    "smtp: the server's TLS certificate is not trusted (wrong host in smtp_url, "
                    "or a CA missing from the system's bundle)",
                ) from exc
            if stage != "DATA" and kind in ("SMTPException", "SMTPNotSupported"):
                # The server lacks what smtp_url asks for (AUTH, a mechanism, STARTTLS).
                raise SendRejected("smtp_unsupported", f"smtp {stage}: {exc}"[:300]) from exc
            if stage == "DATA":
                raise SendOutcomeUnknown(
                    "outcome_unknown", f"smtp DATA: no complete answer ({kind})"
                ) from exc
            raise SendTransient("network", f"smtp {stage}: failed ({kind})") from exc
        finally:
            if smtp.is_connected:
                try:
                    await smtp.quit()
                except (aiosmtplib.SMTPException, OSError):
                    smtp.close()
        message_id = str(email["Message-ID"])
        return SendResult((message_id,), {"message_id": message_id, "smtp_reply": reply.message})
