"""The webhook HTTP server: provider request -> verified events -> Kafka, then the answer.

A request is checked in a fixed order, cheapest first: transport, declared size, channel, body
size while streaming, then the adapter's authenticity check, then its parse, then publishing.
200 means every event was acknowledged by the broker; every refusal is a short JSON
`{"error": ...}`. After authentication the content never earns a 4xx: what cannot become
events (the whole body, or elements of a batch) is published to the dead-letter topic as a
`RawWebhook` with its reason (`ingest.intake`), acknowledged like the events before the 200.
Nothing escapes as a bare 500: a failure during publishing is ours (503 + Retry-After, so the
provider retries).
Every webhook response is counted by transport and status, and every publish is timed
(`ingest.metrics`, served on `GET /metrics`).

Resources are passed to `create_app` explicitly (tests pass fakes); `create_gateway` builds the
real ones and opens/closes them in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from structlog.contextvars import bound_contextvars

from ingest.channels import ChannelDirectory
from ingest.config import Settings, SettingsError, Transport
from ingest.errors import ClaimCheckUnavailable, EventTooLarge, PublishUnavailable, WebhookRejected
from ingest.events import RawWebhook
from ingest.intake import (
    INLINE_MAX_BYTES,
    ClaimCheck,
    StoreClaimCheck,
    Taken,
    kept_records,
    store_blobs,
    take,
)
from ingest.logs import get_logger
from ingest.metrics import metrics_response, observe_kept, observe_publish, observe_request
from ingest.objectstore import ObjectStore, open_store
from ingest.openapi import openapi_document
from ingest.process import settle_heap
from ingest.publisher import EventPublisher
from ingest.transports import load_adapters
from ingest.transports.base import (
    Channel,
    Event,
    ParseContext,
    RawRequest,
    TransportAdapter,
)

log = get_logger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"
# Only ids that are safe to echo and log verbatim are taken over; anything else gets a new one.
_CORRELATION_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNAVAILABLE = "temporarily unavailable"
INLINE_PARSE_MAX_BYTES = 64 * 1024
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_T = TypeVar("_T")


class Publisher(Protocol):
    async def publish(self, events: Sequence[Event | RawWebhook]) -> None: ...

    async def ping(self) -> bool: ...


class Channels(Protocol):
    async def get(self, channel_id: str) -> Channel | None: ...

    async def ping(self) -> bool: ...


class _Refused(Exception):
    """Ends a request early with `status` and `{"error": reason}`."""

    def __init__(self, status: int, reason: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


def correlation_id(headers: Mapping[str, str]) -> str:
    for name in ("x-correlation-id", "x-request-id"):
        value = headers.get(name)
        if value is not None and _CORRELATION_RE.fullmatch(value):
            return value
    return uuid.uuid4().hex


def create_app(
    settings: Settings,
    *,
    publisher: Publisher,
    channels: Channels,
    adapters: Mapping[Transport, TransportAdapter],
    lifespan: Any = None,
    media_store: ObjectStore | None = None,
    claim_check: ClaimCheck | None = None,
    inline_max_bytes: int = INLINE_MAX_BYTES,
) -> Starlette:
    """`media_store` keeps the bytes only a webhook carries (email attachments and messages)
    and, as the claim check, kept bodies over `inline_max_bytes`; without one, such a request
    is answered 503 (logged at WARNING), so the provider retries."""
    if claim_check is None and media_store is not None:
        claim_check = StoreClaimCheck(media_store)
    gateway = _Gateway(
        settings, publisher, channels, adapters, claim_check, inline_max_bytes, media_store
    )
    routes = [
        Route("/webhooks/{transport}/{channel_id}", gateway.webhook, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def create_gateway(settings: Settings) -> Starlette:
    """The production app: real pool, channel directory, producer, adapters and, when
    CRM_INGEST_MEDIA_STORE is set, the media store (else emails with files get 503)."""
    if not settings.database_url:
        raise SettingsError("DATABASE_URL is not set")
    if not settings.kafka_bootstrap_servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is not set")
    channels = ChannelDirectory(settings)
    publisher = EventPublisher(settings)
    store = open_store(settings.media_store) if settings.media_store else None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await channels.open()
        try:
            # Neither dependency has to be up: each failing one makes readyz and webhooks 503
            # until it is back, without a restart.
            await publisher.start()
            if not await channels.ping():
                log.warning("database not reachable at startup")
            if store is None:
                log.warning("no media store: emails with files are answered 503 until set")
            settle_heap()
            log.info("gateway started", transports=sorted(adapters))
            yield
        finally:
            await publisher.stop()
            await channels.close()
            if store is not None:
                await store.close()
            log.info("gateway stopped")

    adapters = load_adapters(settings.default_phone_region)
    return create_app(
        settings,
        publisher=publisher,
        channels=channels,
        adapters=adapters,
        lifespan=lifespan,
        media_store=store,
    )


async def openapi_endpoint(_: Request) -> Response:
    return JSONResponse(openapi_document())


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def metrics_endpoint(_: Request) -> Response:
    body, content_type = metrics_response()
    return Response(body, headers={"Content-Type": content_type})


class _Gateway:
    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        channels: Channels,
        adapters: Mapping[Transport, TransportAdapter],
        claim_check: ClaimCheck | None = None,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        media_store: ObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.media_store = media_store
        self.publisher = publisher
        self.channels = channels
        self.claim_check = claim_check
        self.inline_max_bytes = inline_max_bytes
        # Keyed by plain str: the path segment is looked up before it is known to be a Transport.
        self.adapters: dict[str, TransportAdapter] = dict(adapters.items())

    async def readyz(self, _: Request) -> Response:
        database, kafka = await asyncio.gather(
            _safe_ping(self.channels.ping), _safe_ping(self.publisher.ping)
        )
        checks = {"database": _ok(database), "kafka": _ok(kafka)}
        if database and kafka:
            return JSONResponse({"status": "ready", "checks": checks})
        return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)

    async def webhook(self, request: Request) -> Response:
        transport = request.path_params["transport"]
        channel_id = request.path_params["channel_id"]
        cid = correlation_id(request.headers)
        started = time.perf_counter()
        with ExitStack() as context:
            context.enter_context(
                bound_contextvars(correlation_id=cid, transport=transport, channel_id=channel_id)
            )
            try:
                response, message, fields = await self._serve(
                    request, transport, channel_id, cid, context
                )
            except _Refused as refused:
                response = JSONResponse(
                    {"error": refused.reason}, status_code=refused.status, headers=refused.headers
                )
                level = log.warning if refused.status >= 500 else log.info
                level(
                    "webhook rejected",
                    status=refused.status,
                    reason=refused.reason,
                    duration_ms=_ms_since(started),
                )
            else:
                log.info(
                    message, status=response.status_code, duration_ms=_ms_since(started), **fields
                )
        response.headers[CORRELATION_HEADER] = cid
        observe_request(transport, response.status_code)
        return response

    async def _serve(
        self, request: Request, transport: str, channel_id: str, cid: str, context: ExitStack
    ) -> tuple[Response, str, dict[str, Any]]:
        """The response plus the log line for it; refusals are raised as `_Refused`."""
        adapter = self.adapters.get(transport)
        if adapter is None:
            raise _Refused(404, "unknown transport")
        handshake = getattr(adapter, "handshake", None)
        is_post = request.method == "POST"
        if not is_post and handshake is None:
            raise _Refused(405, "method not allowed", headers={"Allow": "POST"})
        limit = self.settings.max_body_bytes(adapter.transport)
        if is_post:
            _check_declared_size(request, limit)

        channel = await self._channel(channel_id, transport)
        context.enter_context(bound_contextvars(tenant_id=str(channel.tenant_id)))
        raw = RawRequest(
            method=request.method,
            url=str(request.url),
            headers=_headers(request),
            body=await _read_body(request, limit) if is_post else b"",
            query=list(request.query_params.multi_items()),
        )
        if not is_post:
            assert handshake is not None
            text = await _call_adapter(handshake, raw, channel)
            return PlainTextResponse(text), "webhook handshake", {}

        ctx = ParseContext(channel=channel, received_at=datetime.now(UTC), correlation_id=cid)
        verified = await _call_adapter(adapter.verify, raw, ctx)
        taken: Taken = await _off_loop(take, raw, adapter, raw, ctx, verified)
        result, events = taken.result, taken.events
        try:
            events = await store_blobs(events, result.blobs, self.media_store)
            kept = await kept_records(taken.kept, raw, ctx, self.claim_check, self.inline_max_bytes)
            await self._publish(transport, [*events, *kept])
        except ClaimCheckUnavailable as exc:
            log.warning("webhook bytes not stored", reason=str(exc), kept=len(taken.kept))
            raise self._unavailable() from exc
        except EventTooLarge as exc:
            # Permanent: a retry would be refused the same way.
            log.warning("event refused by the broker", reason=exc.reason, events=len(events))
            raise _Refused(exc.status_code, exc.reason) from exc
        except PublishUnavailable as exc:
            log.warning("publish failed", error=str(exc), events=len(result.events))
            raise self._unavailable() from exc
        except Exception as exc:
            log.error("publish failed unexpectedly", exc_info=True, events=len(result.events))
            raise self._unavailable() from exc
        for record in kept:
            # Never the body: what and why, so a provider's format change shows the same day.
            log.warning(
                "webhook kept unprocessed",
                reason_kind=record.reason_kind,
                reason=record.reason,
                element=record.element,
                size_bytes=record.size_bytes,
                record_id=str(record.record_id),
            )
            observe_kept(transport, record.reason_kind)
        response = Response(result.body, media_type=result.media_type)
        if kept:
            return response, "webhook kept", {"events": len(events), "kept": len(kept)}
        if result.events or result.ignored is None:
            return response, "webhook accepted", {"events": len(result.events)}
        return response, "webhook ignored", {"ignored": result.ignored}

    async def _publish(self, transport: str, events: Sequence[Event | RawWebhook]) -> None:
        """Publish and record it: the duration of every attempt, the events acknowledged."""
        if not events:
            await self.publisher.publish(events)
            return
        started = time.perf_counter()
        acknowledged = 0
        try:
            await self.publisher.publish(events)
            acknowledged = sum(1 for e in events if not isinstance(e, RawWebhook))
        finally:
            observe_publish(transport, time.perf_counter() - started, acknowledged)

    async def _channel(self, channel_id: str, transport: str) -> Channel:
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                channel = await self.channels.get(channel_id)
        except _DB_ERRORS as exc:
            # Database down or slow: the provider should retry, not give up.
            log.warning("channel lookup failed", error=repr(exc))
            raise self._unavailable() from exc
        except Exception as exc:
            log.error("channel lookup failed unexpectedly", exc_info=True)
            raise self._unavailable() from exc
        if channel is None or not channel.enabled or channel.transport != transport:
            raise _Refused(404, "unknown channel")
        return channel

    def _unavailable(self) -> _Refused:
        return _Refused(503, UNAVAILABLE, headers={"Retry-After": str(self.settings.retry_after_s)})


async def _off_loop(call: Callable[..., _T], raw: RawRequest, *args: Any) -> _T:
    """Large bodies (email) are handled in a worker thread so one big MIME message does not
    stall every other request; small ones inline, where a thread would cost more than the work.
    """
    if len(raw.body) > INLINE_PARSE_MAX_BYTES:
        return await asyncio.to_thread(call, *args)
    return call(*args)


async def _call_adapter(call: Callable[..., _T], raw: RawRequest, arg: Any) -> _T:
    """Run an adapter's check (authenticity, or the handshake): its refusals keep their
    status; anything unexpected is a request we could not authenticate (401)."""
    try:
        return await _off_loop(call, raw, raw, arg)
    except WebhookRejected as exc:
        raise _Refused(exc.status_code, exc.reason) from exc
    except Exception as exc:
        log.error("adapter failed while authenticating a request", exc_info=True)
        raise _Refused(401, "request could not be authenticated") from exc


def _check_declared_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not (declared.isascii() and declared.isdigit()):
        raise _Refused(400, "invalid content-length")
    if int(declared) > limit:
        raise _Refused(413, "body too large")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, streamed so that no more than `limit` bytes are ever held."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise _Refused(413, "body too large")
            body += chunk
    except ClientDisconnect as exc:
        raise _Refused(400, "client disconnected") from exc
    return bytes(body)


def _headers(request: Request) -> dict[str, str]:
    # First occurrence wins, like Starlette's own `request.headers[name]`.
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), value)
    return headers


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _safe_ping(ping: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return bool(await ping())
    except Exception:
        log.warning("readiness check raised", exc_info=True)
        return False


def _ok(flag: bool) -> str:
    return "ok" if flag else "failed"
