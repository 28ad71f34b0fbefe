"""The event contract between the provider edge and the core: versioned inbound events.

Every event a transport adapter produces is one of the models below, serialized as JSON on the
inbound topic of its transport. The models are the only thing `ingest/` and `handlers/` share.

- `schema_version` is bumped on any incompatible change; consumers dead-letter versions they do
  not know instead of guessing.
- `event_id` is deterministic: the same provider delivery always yields the same id (UUIDv5 over
  the channel and the provider's own identifiers), so redeliveries and replays can be recognised.
- The Kafka key is `conversation_key` (tenant + transport + sender identity): one partition holds
  one conversation, so its events are consumed in order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from ingest.config import Transport

SCHEMA_VERSION: Final = 1

# Fixed namespace for deterministic event ids; never change it (ids would stop matching).
EVENT_ID_NAMESPACE = uuid.UUID("6f1c1c56-3a5e-4f0e-9a57-7d3c2b1e8a40")

ContactType = Literal["telegram", "whatsapp", "phone", "email", "other"]
MessageStatus = Literal["sent", "delivered", "read", "failed"]


def make_event_id(channel_id: uuid.UUID, *provider_ids: object) -> uuid.UUID:
    """Deterministic id: the same channel and provider identifiers give the same UUID."""
    name = "|".join([str(channel_id), *(str(p) for p in provider_ids)])
    return uuid.uuid5(EVENT_ID_NAMESPACE, name)


def conversation_key(tenant_id: uuid.UUID, transport: Transport, identity: str) -> str:
    return f"{tenant_id}:{transport}:{identity}"


def utc_from_unix(seconds: int | float | str) -> datetime:
    return datetime.fromtimestamp(float(seconds), tz=UTC)


class _Model(BaseModel):
    # Tolerant reader: a newer producer may add optional fields without breaking older consumers.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Attachment(_Model):
    """Metadata of a provider-hosted file; the bytes are fetched separately (or never)."""

    kind: str = Field(min_length=1, max_length=50)  # photo, document, voice, video, image, ...
    provider_ref: str = Field(min_length=1)  # Telegram file_id, WhatsApp media id, media URL
    mime_type: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    filename: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)  # width, height, duration, sha256, ...


class Sender(_Model):
    """Who sent a message, as the provider identifies them."""

    contact_type: ContactType
    # The stable identity within the transport: Telegram user/chat id, E.164 phone, email.
    contact_value: str = Field(min_length=1, max_length=255)
    first_name: str = Field(min_length=1, max_length=255)
    last_name: str | None = Field(default=None, max_length=255)
    # Normalized cross-channel identifiers, when the provider gives them.
    phone_e164: str | None = Field(default=None, max_length=20)
    email: str | None = Field(default=None, max_length=255)
    # A second stable identity of the same person and contact type: the WhatsApp business-scoped
    # user id (BSUID), given beside the phone since 2026 and alone for username-only users.
    user_id: str | None = Field(default=None, max_length=255)
    # True when the adapter made `first_name` up (a number, an address, a username, "Telegram
    # user 42"): a later real name replaces it. Older producers leave it False; the core also
    # treats a name equal to one of the identifiers above as made up.
    name_is_placeholder: bool = False


class _InboundEvent(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID
    tenant_id: uuid.UUID
    channel_id: uuid.UUID
    transport: Transport
    conversation_key: str = Field(min_length=1)
    received_at: AwareDatetime
    correlation_id: str | None = None


class MessageEvent(_InboundEvent):
    """A message from a customer, new (`message.received`) or edited (`message.edited`).

    An edit carries the whole message as the provider knows it, so an edit that arrives before
    its original still creates the message; `version` orders edits (higher wins).
    """

    event_type: Literal["message.received", "message.edited"]
    external_message_id: str = Field(min_length=1, max_length=512)
    version: int = Field(ge=0, le=2**63 - 1)  # provider version: edit time (ms), else send time
    sent_at: AwareDatetime
    edited_at: AwareDatetime | None = None
    sender: Sender
    text: str
    attachments: list[Attachment] = Field(default_factory=list)
    # Merged into crm_chat_members.transport_meta (chat id, username, ...).
    member_meta: dict[str, Any] = Field(default_factory=dict)
    # Per-message provider facts that have no column (location, contact card, reply context).
    message_meta: dict[str, Any] = Field(default_factory=dict)


class StatusEvent(_InboundEvent):
    """A delivery/read receipt for a message the provider knows by `external_message_id`."""

    event_type: Literal["message.status"]
    external_message_id: str = Field(min_length=1, max_length=512)
    status: MessageStatus
    status_at: AwareDatetime
    meta: dict[str, Any] = Field(default_factory=dict)


InboundEvent = Annotated[MessageEvent | StatusEvent, Field(discriminator="event_type")]
inbound_event_adapter: TypeAdapter[MessageEvent | StatusEvent] = TypeAdapter(InboundEvent)


# The longest message text an event carries. Kafka refuses records over 1 MB by default, and an
# email's text part may be far longer (the gateway accepts 25 MB bodies): past this, the text
# is cut and `message_meta.text_truncated` keeps the original length. 100,000 characters stay
# under 1 MB even if every one needs a 6-byte JSON escape.
MAX_TEXT_CHARS = 100_000


def within_text_limit(event: MessageEvent) -> MessageEvent:
    """The event as published: its text cut to MAX_TEXT_CHARS, and the cut recorded."""
    if len(event.text) <= MAX_TEXT_CHARS:
        return event
    meta = {**event.message_meta, "text_truncated": {"original_chars": len(event.text)}}
    return event.model_copy(update={"text": event.text[:MAX_TEXT_CHARS], "message_meta": meta})


def encode_event(event: MessageEvent | StatusEvent) -> bytes:
    return event.model_dump_json().encode()


def decode_event(raw: bytes) -> MessageEvent | StatusEvent:
    """Parse one Kafka value; raises pydantic.ValidationError on anything not in the contract."""
    return inbound_event_adapter.validate_json(raw)


def event_headers(event: MessageEvent | StatusEvent) -> list[tuple[str, bytes]]:
    headers = [
        ("event-type", event.event_type.encode()),
        ("event-id", str(event.event_id).encode()),
        ("schema-version", str(event.schema_version).encode()),
        ("content-type", b"application/json"),
    ]
    if event.correlation_id:
        headers.append(("correlation-id", event.correlation_id.encode()))
    return headers


# --- Kept webhooks: authenticated content that could not become events (dead-letter topic) ---

RAW_WEBHOOK: Final = "webhook.raw"
# Why a webhook, or one element of it, was kept instead of published as events.
ReasonKind = Literal[
    "malformed",  # not the syntax the provider sends (not JSON, not a form, wrong content type)
    "unprocessable",  # the syntax is right, the shape is not (a field missing or of a wrong type)
    "no_sender",  # nothing names who sent it
    "channel_mismatch",  # signed, but for another account than the channel's (phone_number_id)
    "unreadable_attachment",  # an attachment whose bytes cannot be decoded; its message went on
    "adapter_error",  # the parser failed unexpectedly: a bug of ours, kept for replay
]


class RawWebhook(_Model):
    """An authenticated webhook (or one element of a batch) kept as received, with the reason it
    could not become events. Published to the dead-letter topic, recorded by the consumer in
    `ingest_dead_letters`, re-parsed by `crm-ingest dlq replay` with the code of the day.

    The bytes travel inline (`body`, base64) or, when larger than a broker record allows,
    through the media store's claim check (`body_ref`, the stored object's URL): exactly one.
    The signature was verified at receipt and is not kept; replay does not verify again.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    record_type: Literal["webhook.raw"] = "webhook.raw"
    record_id: uuid.UUID  # deterministic over channel, body hash and element
    tenant_id: uuid.UUID
    channel_id: uuid.UUID
    transport: Transport
    received_at: AwareDatetime
    correlation_id: str | None = None
    content_type: str = Field(max_length=1000)  # the full header: a multipart boundary matters
    headers: dict[str, str] = Field(default_factory=dict)  # the few the parser reads, no secrets
    element: str | None = Field(default=None, max_length=200)  # e.g. entry.0.changes.0...
    reason_kind: ReasonKind
    reason: str = Field(min_length=1, max_length=500)
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    body: str | None = None  # base64 of the bytes
    body_ref: str | None = None  # object-store URL of the bytes

    @model_validator(mode="after")
    def _one_body(self) -> RawWebhook:
        if (self.body is None) == (self.body_ref is None):
            raise ValueError("exactly one of body and body_ref")
        return self

    @property
    def kafka_key(self) -> str:
        return f"{self.tenant_id}:{self.transport}:{self.channel_id}"

    def inline_bytes(self) -> bytes | None:
        """The kept bytes when they travel inline (None when they are behind `body_ref`)."""
        if self.body is None:
            return None
        try:
            return base64.b64decode(self.body, validate=True)
        except binascii.Error as exc:
            raise ValueError("body is not base64") from exc


def raw_webhook_id(channel_id: uuid.UUID, sha256_hex: str, element: str | None) -> uuid.UUID:
    """The same bytes kept twice (a provider retry after a 503) have one id."""
    return make_event_id(channel_id, RAW_WEBHOOK, sha256_hex, element or "")


def encode_raw_webhook(record: RawWebhook) -> bytes:
    return record.model_dump_json().encode()


def decode_raw_webhook(raw: bytes) -> RawWebhook:
    """Parse one dead-letter value; raises pydantic.ValidationError when it is not one."""
    return RawWebhook.model_validate_json(raw)


def raw_webhook_headers(record: RawWebhook) -> list[tuple[str, bytes]]:
    headers = [
        ("event-type", RAW_WEBHOOK.encode()),
        ("event-id", str(record.record_id).encode()),
        ("schema-version", str(record.schema_version).encode()),
        ("content-type", b"application/json"),
        ("reason-kind", record.reason_kind.encode()),
    ]
    if record.correlation_id:
        headers.append(("correlation-id", record.correlation_id.encode()))
    return headers


# --- Outbound: chat events for other services (topic crm.chat.events, key = chat) -----------

CHAT_EVENT_NAMESPACE = uuid.UUID("0b8e3c1a-52a4-4c0e-b1f4-3f9d6c2a7e15")


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` without the UUID object in between: a third of the
    cost, paid for every chat event the consumer writes."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_chat_event_id(*parts: object) -> str:
    """Deterministic: the same change always has the same id, so re-emits can be deduplicated."""
    return uuid5_text(CHAT_EVENT_NAMESPACE, "|".join(str(p) for p in parts))


def chat_key(tenant_id: uuid.UUID | str, chat_id: int) -> str:
    return f"{tenant_id}:{chat_id}"


class ChatAttachment(_Model):
    upload_id: int | None = None
    kind: str
    provider_ref: str
    mime_type: str | None = None
    filename: str | None = None
    size_bytes: int | None = None


class _ChatEvent(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: uuid.UUID
    tenant_id: uuid.UUID
    client_id: int
    chat_id: int
    occurred_at: AwareDatetime


Direction = Literal["inbound", "outbound"]
# `accepted`: the provider took an outbound message; the rest come from provider statuses.
ChatMessageStatus = Literal["accepted", "sent", "delivered", "read", "failed"]


class SendFailure(_Model):
    """Why an outbound message failed: the provider's code (or ours) and whether a retry,
    later or after a fix, could help."""

    code: str
    message: str
    retryable: bool


class MessageCreated(_ChatEvent):
    event_type: Literal["message.created"] = "message.created"
    member_id: uuid.UUID
    message_id: int
    transport: Transport
    text: str
    sent_at: AwareDatetime | None
    attachments: list[ChatAttachment] = Field(default_factory=list)
    direction: Direction = "inbound"
    command_id: uuid.UUID | None = None  # the message.send command of an outbound message


class AttachmentOutcome(_Model):
    """How fetching one attachment's bytes ended (`change: "attachment"`)."""

    upload_id: int
    status: Literal["stored", "failed"]
    path: str | None = None  # the object's URL, once stored
    size: int | None = None  # bytes stored
    hash: str | None = None  # sha256 hex of the bytes stored
    mimetype: str | None = None
    error: str | None = None  # short reason, when failed


class MessageUpdated(_ChatEvent):
    event_type: Literal["message.updated"] = "message.updated"
    message_id: int
    change: Literal["edited", "status", "attachment", "failed"]
    text: str | None = None  # the new text, for edits
    status: ChatMessageStatus | None = None  # for status changes
    sent_at: AwareDatetime | None = None
    read_at: AwareDatetime | None = None
    attachment: AttachmentOutcome | None = None  # for attachment changes
    command_id: uuid.UUID | None = None  # set on the updates of an outbound message
    error: SendFailure | None = None  # for change "failed"


class ClientCreated(_ChatEvent):
    event_type: Literal["client.created"] = "client.created"
    first_name: str
    last_name: str | None = None
    phone_number: str | None = None
    email: str | None = None


class ChatCreated(_ChatEvent):
    event_type: Literal["chat.created"] = "chat.created"


class FieldChange(_Model):
    field: Literal["first_name", "last_name", "phone_number"]
    old: str | None
    new: str | None


class ClientUpdated(_ChatEvent):
    """crm-ingest renamed a client it had named (a placeholder, or its own older name from the
    same transport) with a newer real name, or gave a client without a phone number the phone
    a linked identity brought; `changes` lists each changed field."""

    event_type: Literal["client.updated"] = "client.updated"
    changes: list[FieldChange]


class ClientIdentityConflict(_ChatEvent):
    """A sender's two identities belong to two clients: messages of `contact_value` stay with
    `client_id`, its `linked_value` (WhatsApp user id) is `linked_client_id`'s. Nothing is
    merged; the host decides (see ingest_identity_conflicts)."""

    event_type: Literal["client.identity_conflict"] = "client.identity_conflict"
    contact_type: ContactType
    contact_value: str
    linked_value: str
    linked_client_id: int


AnyChatEvent = (
    MessageCreated
    | MessageUpdated
    | ClientCreated
    | ChatCreated
    | ClientUpdated
    | ClientIdentityConflict
)
ChatEvent = Annotated[AnyChatEvent, Field(discriminator="event_type")]
chat_event_adapter: TypeAdapter[AnyChatEvent] = TypeAdapter(ChatEvent)


# --- Commands: replies other services ask us to send (topic crm.outbound.commands) --------


class WhatsAppTemplateRef(_Model):
    """A Meta-approved template: the only thing WhatsApp delivers outside the 24-hour window."""

    name: str = Field(min_length=1, max_length=512)
    language: str = Field(
        min_length=2, max_length=20, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]+)*$"
    )
    parameters: list[str] = Field(default_factory=list, max_length=100)  # body values, in order


class SendCommand(_Model):
    """`message.send`: write into a chat as a CRM user (or as the system, `user_id` null).

    Exactly one of `text`, `template_id` (a crm_message_templates row of the tenant, its
    `{{name}}` placeholders filled from `template_params`) and `whatsapp_template`. Keyed
    `<tenant_id>:<chat_id>`, so one chat's commands are executed in order; executed once per
    `command_id`, however often it is delivered.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    type: Literal["message.send"] = "message.send"
    command_id: uuid.UUID
    tenant_id: uuid.UUID
    chat_id: int = Field(ge=1, le=2**31 - 1)
    user_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    template_id: int | None = Field(default=None, ge=1, le=2**31 - 1)
    template_params: dict[str, str] = Field(default_factory=dict)
    whatsapp_template: WhatsAppTemplateRef | None = None
    attachments: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        default_factory=list, max_length=10
    )
    channel_id: uuid.UUID | None = None  # null: the channel of the client's last inbound message
    reply_to_message_id: int | None = Field(default=None, ge=1, le=2**31 - 1)  # crm message id

    @model_validator(mode="after")
    def _one_content(self) -> SendCommand:
        given = [
            name
            for name in ("text", "template_id", "whatsapp_template")
            if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "exactly one of text, template_id, whatsapp_template is required"
                f" (got {', '.join(given) or 'none'})"
            )
        if self.text is not None and not self.text.strip() and not self.attachments:
            raise ValueError("text is empty and there are no attachments")
        return self


def command_key(command: SendCommand) -> str:
    """The Kafka key of a command: its chat, so one chat's replies keep their order."""
    return chat_key(command.tenant_id, command.chat_id)


def encode_command(command: SendCommand) -> bytes:
    return command.model_dump_json().encode()


def decode_command(raw: bytes) -> SendCommand:
    """Parse one command; raises pydantic.ValidationError on anything not in the contract."""
    return SendCommand.model_validate_json(raw)


def command_headers(command: SendCommand) -> list[tuple[str, bytes]]:
    return [
        ("event-type", command.type.encode()),
        ("event-id", str(command.command_id).encode()),
        ("schema-version", str(command.schema_version).encode()),
        ("content-type", b"application/json"),
    ]
