"""Authenticated content -> events, plus what is kept: the one rule between adapters and Kafka.

After authentication, content never earns a 4xx. `take` runs an adapter's parse and turns every
content failure into a kept body: the whole request when it cannot be parsed, or the elements
the adapter set aside (`WebhookResult.kept`). `kept_records` turns those into `RawWebhook`
records for the dead-letter topic, inline when they fit a broker record, else through the
media store's claim check. The gateway uses both at receipt; `crm-ingest dlq replay` uses
`take` again (parse only: the signature was verified at receipt) with the current code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ingest.config import Transport
from ingest.errors import ClaimCheckUnavailable, WebhookRejected
from ingest.events import MessageEvent, RawWebhook, raw_webhook_id, within_text_limit
from ingest.logs import get_logger
from ingest.objectstore import (
    ObjectStore,
    StoredObject,
    StoreError,
    content_addressed_key,
)
from ingest.transports.base import (
    Blob,
    Channel,
    Event,
    KeptElement,
    ParseContext,
    RawRequest,
    TransportAdapter,
    WebhookResult,
)

log = get_logger(__name__)

# Kept bodies up to this size travel inline. Base64 makes them 4/3 larger, and the record's
# other fields are small, so the record stays under Kafka's default 1 MiB limit.
INLINE_MAX_BYTES = 640 * 1024
# Request headers a parser reads besides the body; nothing secret (no Authorization, no
# signatures: replay does not verify).
REPLAY_HEADERS = ("content-type", "i-twilio-idempotency-token")


class ClaimCheck(Protocol):
    """Where bodies too large for a broker record go: the media object store."""

    async def put(self, data: bytes, content_type: str) -> str:
        """Store `data` durably and return its URL (`body_ref`)."""
        ...


class ClaimCheckReader(Protocol):
    async def get(self, url: str) -> bytes: ...


class StoreClaimCheck:
    """The media object store as the claim check: content-addressed, so a provider's retry of
    the same body stores nothing new."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def put(self, data: bytes, content_type: str) -> str:
        key = content_addressed_key(hashlib.sha256(data).hexdigest(), "webhooks")
        return (await self._store.put_bytes(key, data, content_type or None)).url

    async def get(self, url: str) -> bytes:
        return b"".join([chunk async for chunk in self._store.get(url)])


async def store_blobs(
    events: Sequence[Event], blobs: Sequence[Blob], store: ObjectStore | None
) -> list[Event]:
    """Store the bytes only the webhook carries (email attachments, the raw message), then point
    the events at the stored objects. Raises ClaimCheckUnavailable when they cannot be stored:
    the provider gets a 503 and retries; nothing is published without its bytes."""
    if not blobs:
        return list(events)
    if store is None:
        raise ClaimCheckUnavailable(
            "the webhook carries file bytes and no media store is configured "
            "(CRM_INGEST_MEDIA_STORE)"
        )
    stored: dict[str, StoredObject] = {}
    for blob in blobs:
        key = content_addressed_key(hashlib.sha256(blob.data).hexdigest(), "email")
        try:
            stored[blob.ref] = await store.put_bytes(key, blob.data, blob.content_type)
        except StoreError as exc:
            raise ClaimCheckUnavailable(f"media store failed: {exc}"[:300]) from exc
    return [_pointed(e, stored) if isinstance(e, MessageEvent) else e for e in events]


def _pointed(event: MessageEvent, stored: Mapping[str, StoredObject]) -> MessageEvent:
    attachments = [
        a.model_copy(
            update={
                "provider_ref": found.url,
                "size_bytes": found.size,
                "meta": {**a.meta, "sha256": found.sha256},
            }
        )
        if (found := stored.get(a.provider_ref)) is not None
        else a
        for a in event.attachments
    ]
    meta = dict(event.message_meta)
    if (raw := stored.get(str(meta.get("raw_mime")))) is not None:
        meta["raw_mime"] = raw.url
    return event.model_copy(update={"attachments": attachments, "message_meta": meta})


@dataclass(slots=True)
class Taken:
    """What a verified request yields: events to publish (text within the limit), bodies to
    keep, and the answer the provider expects."""

    result: WebhookResult
    kept: list[KeptElement] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _whole(request: RawRequest, reason: str, kind: str) -> KeptElement:
    return KeptElement(
        body=request.body,
        content_type=request.header("content-type") or "",
        element="",
        reason=reason[:500],
        reason_kind=kind,
    )


def take(
    adapter: TransportAdapter, request: RawRequest, ctx: ParseContext, verified: Any = None
) -> Taken:
    """Parse a verified request. Never raises for its content: what fails is kept."""
    try:
        result = adapter.parse(request, ctx, verified)
    except WebhookRejected as exc:
        body, media_type = adapter.accepted_body
        empty = WebhookResult(events=[], body=body, media_type=media_type)
        return Taken(empty, [_whole(request, exc.reason, exc.reason_kind)])
    except Exception as exc:
        # A parser bug must not lose a genuine webhook either: keep it for a replay after the fix.
        # Where it failed, not the exception's text (pydantic's quotes the input: the body).
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        log.error(
            "parser failed on a verified request",
            error_class=type(exc).__name__,
            at=f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}",
        )
        body, media_type = adapter.accepted_body
        empty = WebhookResult(events=[], body=body, media_type=media_type)
        return Taken(empty, [_whole(request, "the parser failed on this request", "adapter_error")])
    events = [within_text_limit(e) if isinstance(e, MessageEvent) else e for e in result.events]
    return Taken(result, list(result.kept), events)


async def kept_records(
    kept: Sequence[KeptElement],
    request: RawRequest,
    ctx: ParseContext,
    claim_check: ClaimCheck | None,
    inline_max_bytes: int = INLINE_MAX_BYTES,
) -> list[RawWebhook]:
    """The dead-letter records of `kept`; raises ClaimCheckUnavailable when a body too large
    for a broker record cannot be stored (no store configured, or the store failed)."""
    records = []
    channel = ctx.channel
    headers = {name: v for name in REPLAY_HEADERS if (v := request.header(name)) is not None}
    for element in kept:
        digest = hashlib.sha256(element.body).hexdigest()
        body: str | None = None
        body_ref: str | None = None
        if len(element.body) <= inline_max_bytes:
            body = base64.b64encode(element.body).decode("ascii")
        elif claim_check is None:
            raise ClaimCheckUnavailable(
                f"kept body of {len(element.body)} bytes is over {inline_max_bytes} and no "
                "media store is configured for the claim check"
            )
        else:
            try:
                body_ref = await claim_check.put(element.body, element.content_type)
            except Exception as exc:
                raise ClaimCheckUnavailable(f"claim check failed: {exc!r}"[:300]) from exc
        content_type = element.content_type
        element_headers = headers if not element.element else {"content-type": content_type}
        records.append(
            RawWebhook(
                record_id=raw_webhook_id(channel.id, digest, element.element),
                tenant_id=channel.tenant_id,
                channel_id=channel.id,
                transport=channel.transport,
                received_at=ctx.received_at,
                correlation_id=ctx.correlation_id,
                content_type=content_type[:1000],
                headers=element_headers,
                element=element.element or None,
                reason_kind=element.reason_kind,  # type: ignore[arg-type]
                reason=element.reason,
                size_bytes=len(element.body),
                sha256=digest,
                body=body,
                body_ref=body_ref,
            )
        )
    return records


def replay_request(record: RawWebhook, body: bytes) -> RawRequest:
    """The request a kept record stands for, to parse again."""
    headers = {"content-type": record.content_type, **record.headers}
    return RawRequest(method="POST", url="", headers=headers, body=body)


class ChannelLookup(Protocol):
    async def get(self, channel_id: str) -> Channel | None: ...


@dataclass(frozen=True, slots=True)
class Reparsed:
    events: list[Event]
    # (reason, reason_kind) when it is still not processable; its events, if any, still count.
    still_kept: tuple[str, str] | None = None


class Reparser:
    """`dlq replay` of a kept webhook: its channel as it is now, the current adapter code, no
    signature check (verified at receipt, and the signature is not kept)."""

    def __init__(
        self,
        channels: ChannelLookup,
        adapters: Mapping[Transport, TransportAdapter],
        store: ObjectStore | None = None,
    ) -> None:
        self._channels = channels
        self._adapters = adapters
        self._store = store
        self._reader = StoreClaimCheck(store) if store is not None else None

    async def __call__(self, record: RawWebhook) -> Reparsed:
        channel = await self._channels.get(str(record.channel_id))
        if channel is None or not channel.enabled or channel.transport != record.transport:
            return Reparsed([], ("its channel is unknown, disabled or of another transport", ""))
        body = record.inline_bytes()
        if body is None:
            assert record.body_ref is not None  # exactly one of the two
            if self._reader is None:
                return Reparsed([], ("its body is in the media store and no reader is set", ""))
            body = await self._reader.get(record.body_ref)
        request = replay_request(record, body)
        ctx = ParseContext(channel, record.received_at, record.correlation_id)
        adapter = self._adapters[record.transport]
        taken = await asyncio.to_thread(take, adapter, request, ctx)
        try:
            events = await store_blobs(taken.events, taken.result.blobs, self._store)
        except ClaimCheckUnavailable as exc:
            return Reparsed([], (str(exc), "store_unavailable"))
        if not taken.kept:
            return Reparsed(events)
        first = taken.kept[0]
        return Reparsed(events, (first.reason, first.reason_kind))
