"""Sending replies, provider-neutral: what the dispatcher hands a provider, what comes back,
and the one error tree every sender raises.

The core (the dispatcher) depends on this module only, never on a provider package. Each
provider implements `MessageSender` in `ingest/transports/<provider>/send.py`; the HTTP ones
call through `ingest.transports.http_send`, so the translation of httpx errors into
transient / unknown outcomes exists exactly once.

The three outcomes of a failed send are what the dispatcher needs to stay exactly-once:
`SendTransient` means the provider certainly did not accept (safe to retry), `SendRejected`
means retrying cannot help, `SendOutcomeUnknown` means the request may have been accepted and
must never be resent blindly.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ingest.config import Transport

if TYPE_CHECKING:
    import httpx

    from ingest.config import Settings
    from ingest.objectstore import ObjectStore


@dataclass(frozen=True, slots=True)
class OutboundAttachment:
    """A stored upload (a `core_uploads` row whose path is an object-store URL)."""

    upload_id: int
    url: str
    name: str | None
    mimetype: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class WhatsAppTemplate:
    """A Meta-approved template: the only thing WhatsApp accepts outside the 24-hour window."""

    name: str
    language: str  # locale code, "en_US"
    parameters: tuple[str, ...]  # body text values, in order


@dataclass(frozen=True, slots=True)
class EmailThread:
    """The conversation an email reply threads into; msg-ids keep their angle brackets."""

    subject: str | None
    in_reply_to: str | None
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    command_id: uuid.UUID
    to: str  # telegram chat id; WhatsApp wa_id; E.164 phone (sms); email address
    text: str | None  # already rendered (templates are rendered by the core)
    whatsapp_template: WhatsAppTemplate | None = None
    attachments: tuple[OutboundAttachment, ...] = ()
    reply_to: str | None = None  # provider id of the message replied to (telegram id, wamid)
    email_message_id: str | None = None  # generated and recorded by the core BEFORE sending
    email_thread: EmailThread | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    # One id per provider message, in order (a long Telegram text is several messages).
    provider_message_ids: tuple[str, ...]
    detail: Mapping[str, Any] = field(default_factory=dict)


class MessageSender(Protocol):
    """Sends through one provider; `config` is the channel's decrypted config."""

    transport: ClassVar[Transport]

    def check(self, message: OutboundMessage, config: Mapping[str, Any]) -> None:
        """The provider's rules, before any call: raises SendRejected (a missing channel key,
        a text or caption too long, too many or unsendable attachments, …)."""
        ...

    async def send(self, message: OutboundMessage, config: Mapping[str, Any]) -> SendResult: ...


class SendError(Exception):
    """A send failed. `code` is the provider's error code (or ours, e.g. "too_long");
    `message` is short and never holds a token or a URL carrying one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        # Provider ids of the parts of this send accepted before it failed (a long Telegram
        # text is several messages): resending the whole would repeat them.
        self.accepted_ids: tuple[str, ...] = ()


class SendTransient(SendError):
    """Certainly NOT accepted and worth retrying: connection refused, 429 / flood control,
    a 5xx answer, Meta 130429 / 131056. `retry_after` is the provider's hint in seconds."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class SendRejected(SendError):
    """Permanent: blocked by the user, invalid number, unsubscribed, outside the window, bad
    template, credentials refused, a rule checked before the call."""


class SendOutcomeUnknown(SendError):
    """The request may have been accepted (read timeout after the body went out, connection
    reset mid-response): never resent blindly."""


def require_key(config: Mapping[str, Any], key: str) -> str:
    """A channel config value, or a rejection saying how to set it."""
    value = config.get(key)
    if isinstance(value, str) and value:
        return value
    raise SendRejected(
        "missing_channel_key",
        f"channel has no {key}: run crm-ingest channel set <channel id> --config {key}=…",
    )


def check_shape(
    message: OutboundMessage,
    *,
    provider: str,
    max_attachments: int,
    max_bytes: int | None,
    templates: bool = False,
) -> None:
    """The rules every provider shares: something to send, a WhatsApp template only where
    `templates`, at most `max_attachments`, none declared over `max_bytes` (per attachment;
    None: no per-attachment limit)."""
    if message.whatsapp_template is not None and not templates:
        raise SendRejected("unsupported", f"a WhatsApp template cannot go out on {provider}")
    nothing = not (message.text or "").strip() and not message.attachments
    if message.whatsapp_template is None and nothing:
        raise SendRejected("empty", "nothing to send: no text and no attachment")
    if len(message.attachments) > max_attachments:
        raise SendRejected(
            "too_many_attachments", f"{provider} takes at most {max_attachments} attachments"
        )
    for attachment in message.attachments:
        if max_bytes is not None and attachment.size is not None and attachment.size > max_bytes:
            raise SendRejected(
                "attachment_too_large",
                f"attachment {attachment.upload_id} is over {provider}'s limit of "
                f"{max_bytes // (1024 * 1024)} MB",
            )


def load_senders(
    settings: Settings, client: httpx.AsyncClient, store: ObjectStore
) -> dict[Transport, MessageSender]:
    """One sender per transport. `client` and `store` are shared and owned by the caller."""
    from ingest.transports.email.send import EmailSender
    from ingest.transports.sms.send import TwilioSender
    from ingest.transports.telegram.send import TelegramSender
    from ingest.transports.whatsapp.send import WhatsAppSender

    senders: list[MessageSender] = [
        TelegramSender(settings, client, store),
        WhatsAppSender(settings, client, store),
        TwilioSender(settings, client, store),
        EmailSender(settings, store),
    ]
    return {sender.transport: sender for sender in senders}
