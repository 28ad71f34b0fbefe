"""The one narrow interface every transport adapter implements: raw request -> verified events.

Adapters never touch the network, the database or Kafka, so each is testable with a
`RawRequest` built in memory. They verify authenticity first (on the raw bytes, in constant
time), then parse, and signal every refusal with an `ingest.errors.WebhookRejected` subclass.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from ingest.config import Transport
from ingest.errors import BadPayload, UnprocessablePayload
from ingest.events import MessageEvent, StatusEvent, conversation_key, make_event_id

Event = MessageEvent | StatusEvent


@dataclass(frozen=True, slots=True)
class Channel:
    """A provider channel of one tenant (a row of `ingest_channels`)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    transport: Transport
    config: Mapping[str, Any]  # decrypted (ingest.credentials); held in memory only
    enabled: bool = True
    # Secrets replaced by `channel set`/`rotate`, still accepted until the given time.
    previous: Mapping[str, tuple[str, datetime]] = field(default_factory=dict)

    def secrets(self, name: str) -> tuple[str, ...]:
        """The accepted values of a secret: the current one, then one still in its grace period.
        Empty when none is set, so a channel without a secret trusts nobody."""
        values = [self.config.get(name)]
        if (previous := self.previous.get(name)) is not None and previous[1] > datetime.now(UTC):
            values.append(previous[0])
        return tuple(v for v in values if isinstance(v, str) and v)


@dataclass(frozen=True, slots=True)
class RawRequest:
    """An HTTP request as received, before anything is trusted."""

    method: str
    url: str  # the full URL the gateway saw, query string included
    headers: Mapping[str, str]  # lower-cased names
    body: bytes = b""
    query: Sequence[tuple[str, str]] = field(default_factory=tuple)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        raw = self.header("content-type") or ""
        return raw.split(";", 1)[0].strip().lower()

    def query_value(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What the gateway knows about a request besides its bytes."""

    channel: Channel
    received_at: datetime
    correlation_id: str | None = None

    def envelope(
        self, transport: Transport, identity: str, *provider_ids: object
    ) -> dict[str, Any]:
        """The fields every event of this request shares: a deterministic id over the channel,
        the transport and the provider's own ids, and the conversation key of `identity`."""
        channel = self.channel
        return {
            "event_id": make_event_id(channel.id, transport, *provider_ids),
            "tenant_id": channel.tenant_id,
            "channel_id": channel.id,
            "transport": transport,
            "conversation_key": conversation_key(channel.tenant_id, transport, identity),
            "received_at": self.received_at,
            "correlation_id": self.correlation_id,
        }


@dataclass(frozen=True, slots=True)
class KeptElement:
    """One element of a verified request that cannot become an event (a WhatsApp message of a
    batch, a Mailgun attachment): its raw JSON or bytes, kept with the reason."""

    body: bytes
    content_type: str
    element: str  # where it was, e.g. entry.0.changes.0.value.messages.3
    reason: str
    reason_kind: str = "unprocessable"


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes only the webhook carries (an email's attachments and raw MIME): the gateway stores
    them before it publishes, and puts the stored object's URL wherever the event says `ref`."""

    ref: str  # the placeholder the event carries (an attachment's provider_ref, a meta value)
    data: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What a verified request yields: events to publish, and the body the provider expects."""

    events: list[Event]
    body: bytes = b'{"ok":true}'
    media_type: str = "application/json"
    ignored: str | None = None  # why a valid request produced no events (logged)
    kept: list[KeptElement] = field(default_factory=list)  # elements for the dead-letter topic
    blobs: list[Blob] = field(default_factory=list)  # bytes to store before publishing


class TransportAdapter(Protocol):
    # Read-only, so an adapter's narrower `ClassVar[Literal["sms"]]` satisfies it.
    @property
    def transport(self) -> Transport: ...

    # The answer the provider expects to a request whose content was kept, not published.
    @property
    def accepted_body(self) -> tuple[bytes, str]: ...

    def verify(self, request: RawRequest, ctx: ParseContext) -> Any:
        """Authenticity only: raise Unauthorized/Forbidden, or return what verifying already
        decoded (a form whose fields carry the signature) for `parse` to reuse."""
        ...

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        """Content only (verified at receipt, or replayed): events, or BadPayload/Unprocessable."""
        ...

    def handle(self, request: RawRequest, ctx: ParseContext) -> WebhookResult:
        """Verify, then parse; raise a WebhookRejected subclass for anything refused."""
        ...

    def channel_config(
        self, given: Mapping[str, str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """`current` with `given` applied: values validated, missing generated secrets made."""
        ...


def matches_any(given: bytes, accepted: Iterable[bytes]) -> bool:
    """Constant-time comparison against every accepted value (no early exit on a match)."""
    matched = False
    for value in accepted:
        matched |= hmac.compare_digest(given, value)
    return matched


class VerifyThenParse:
    """`handle` for adapters built as `verify` + `parse`."""

    accepted_body: ClassVar[tuple[bytes, str]] = (b'{"ok":true}', "application/json")

    def verify(self, request: RawRequest, ctx: ParseContext) -> Any:
        raise NotImplementedError

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        raise NotImplementedError

    def handle(self, request: RawRequest, ctx: ParseContext) -> WebhookResult:
        return self.parse(request, ctx, self.verify(request, ctx))


def utf8(value: str) -> bytes:
    # surrogatepass: a header decoded with surrogateescape must not raise here.
    return value.encode("utf-8", "surrogatepass")


Model = TypeVar("Model", bound=BaseModel)


def validation_reason(exc: ValidationError, root: str, within: str = "") -> str:
    """The first error as `where: what`, short enough for a 4xx body; `within` is the path of
    the validated element inside the request."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in err["loc"]) or root
    if within:
        loc = f"{within}.{loc}" if err["loc"] else within
    msg = err["msg"]
    return f"{loc}: {msg[:1].lower()}{msg[1:]}"[:200]


def parse_json_body(model: type[Model], body: bytes, root: str) -> Model:
    """The one place where JSON and pydantic errors of a JSON webhook become rejections:
    not JSON, or not an object -> 400; an object of the wrong shape -> 422."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        if err["type"] == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            raise BadPayload(f"malformed JSON: {detail}".rstrip(": ")[:200]) from exc
        if err["type"] == "model_type" and not err["loc"]:
            raise BadPayload("expected a JSON object") from exc
        raise UnprocessablePayload(validation_reason(exc, root)) from exc
