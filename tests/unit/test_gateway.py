"""The gateway's HTTP behaviour with fake resources: no broker, no database."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from structlog.testing import capture_logs

from ingest.config import Settings, Transport
from ingest.errors import EventTooLarge, PublishUnavailable, Unauthorized, UnprocessablePayload
from ingest.events import MessageEvent, RawWebhook, Sender, conversation_key
from ingest.gateway import create_app
from ingest.intake import ClaimCheck
from ingest.transports.base import (
    Channel,
    Event,
    KeptElement,
    ParseContext,
    RawRequest,
    TransportAdapter,
    VerifyThenParse,
    WebhookResult,
)

TENANT = uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b")
CHANNEL = Channel(
    id=uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
    tenant_id=TENANT,
    transport="telegram",
    config={"secret_token": "s3cr3t"},
)
DISABLED = Channel(
    id=uuid.UUID("1b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
    tenant_id=TENANT,
    transport="telegram",
    config={"secret_token": "s3cr3t"},
    enabled=False,
)
SMS_CHANNEL = Channel(
    id=uuid.UUID("2b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
    tenant_id=TENANT,
    transport="sms",
    config={"auth_token": "x"},
)
URL = f"/webhooks/telegram/{CHANNEL.id}"
SETTINGS = Settings(retry_after_s=7, max_body_bytes_telegram=2048)
PAYLOADS = Path(__file__).resolve().parents[1] / "payloads" / "telegram"


def make_event(ctx: ParseContext, n: int) -> MessageEvent:
    return MessageEvent(
        event_id=uuid.uuid4(),
        tenant_id=ctx.channel.tenant_id,
        channel_id=ctx.channel.id,
        transport="telegram",
        conversation_key=conversation_key(ctx.channel.tenant_id, "telegram", "42"),
        received_at=ctx.received_at,
        correlation_id=ctx.correlation_id,
        event_type="message.received",
        external_message_id=f"42:{n}",
        version=0,
        sent_at=datetime(2024, 5, 1, tzinfo=UTC),
        sender=Sender(contact_type="telegram", contact_value="42", first_name="Ann"),
        text="hi",
    )


class FakeAdapter(VerifyThenParse):
    """Body `{"n": <events>, "bad": <elements kept>}`; header `x-secret` must match the
    channel's secret_token; `n` < 0 is refused as unprocessable."""

    transport: ClassVar[Transport] = "telegram"

    def __init__(self) -> None:
        self.seen: list[tuple[RawRequest, ParseContext]] = []

    def verify(self, request: RawRequest, ctx: ParseContext) -> None:
        self.seen.append((request, ctx))
        if request.header("x-secret") != ctx.channel.config["secret_token"]:
            raise Unauthorized("bad secret")

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        doc = json.loads(request.body)  # KeyError/ValueError: "unexpected" adapter failures
        n = doc["n"]
        if n < 0:
            raise UnprocessablePayload("n: must not be negative")
        kept = [
            KeptElement(b'{"el":%d}' % i, "application/json", f"bad.{i}", f"bad.{i}: broken")
            for i in range(doc.get("bad", 0))
        ]
        if n == 0 and not kept:
            return WebhookResult(events=[], ignored="nothing to do")
        return WebhookResult(events=[make_event(ctx, i) for i in range(n)], kept=kept)

    def channel_config(self, given: Mapping[str, str]) -> dict[str, Any]:
        return dict(given)


class HandshakeAdapter(FakeAdapter):
    def handshake(self, request: RawRequest, channel: Channel) -> str:
        if request.query_value("hub.verify_token") != channel.config["secret_token"]:
            raise Unauthorized("bad verify token")
        return request.query_value("hub.challenge") or ""


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[Event] = []
        self.error: Exception | None = None
        self.ready = True

    async def publish(self, events: Sequence[Event | RawWebhook]) -> None:
        if self.error is not None:
            raise self.error
        self.published.extend(events)  # type: ignore[arg-type]

    def kept(self) -> list[RawWebhook]:
        return [r for r in self.published if isinstance(r, RawWebhook)]

    async def ping(self) -> bool:
        return self.ready


class FakeChannels:
    def __init__(self, *channels: Channel) -> None:
        self.by_id = {str(c.id): c for c in channels}
        self.error: Exception | None = None
        self.ready = True

    async def get(self, channel_id: str) -> Channel | None:
        if self.error is not None:
            raise self.error
        return self.by_id.get(channel_id)

    async def ping(self) -> bool:
        return self.ready


class Env:
    def __init__(self, adapter: FakeAdapter | None = None) -> None:
        self.adapter = adapter or FakeAdapter()
        self.publisher = FakePublisher()
        self.channels = FakeChannels(CHANNEL, DISABLED, SMS_CHANNEL)
        self.adapters: dict[Transport, TransportAdapter] = {"telegram": self.adapter}
        self.claim_check: ClaimCheck | None = None
        self.inline_max_bytes = 1024

    def client(self) -> httpx.AsyncClient:
        app = create_app(
            SETTINGS,
            publisher=self.publisher,
            channels=self.channels,
            adapters=self.adapters,
            claim_check=self.claim_check,
            inline_max_bytes=self.inline_max_bytes,
        )
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.fixture
def env() -> Env:
    return Env()


def post(client: httpx.AsyncClient, url: str = URL, *, n: int = 1, **kw: Any) -> Any:
    headers = {"x-secret": "s3cr3t", **kw.pop("headers", {})}
    content = kw.pop("content", json.dumps({"n": n}).encode())
    return client.post(url, content=content, headers=headers, **kw)


async def test_accepted_request_publishes_every_event(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, n=3)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert len(env.publisher.published) == 3
    raw, ctx = env.adapter.seen[0]
    assert raw.method == "POST"
    assert raw.url == f"http://gw{URL}"
    assert raw.headers["x-secret"] == "s3cr3t"
    assert ctx.channel == CHANNEL
    assert ctx.received_at.tzinfo is not None
    assert ctx.correlation_id == response.headers["x-correlation-id"]


async def test_query_pairs_reach_the_adapter(env: Env) -> None:
    async with env.client() as client:
        await post(client, f"{URL}?a=1&a=2&b=")
    assert list(env.adapter.seen[0][0].query) == [("a", "1"), ("a", "2"), ("b", "")]


async def test_ignored_request_is_200_without_events(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, n=0)
    assert response.status_code == 200
    assert env.publisher.published == []


async def test_adapter_rejection_keeps_its_status_and_publishes_nothing(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, headers={"x-secret": "wrong"})
    assert response.status_code == 401
    assert response.json() == {"error": "bad secret"}
    assert env.publisher.published == []


async def test_unexpected_parser_failure_is_kept_and_200(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, content=b"{}", headers={"content-type": "text/x-odd"})
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    [kept] = env.publisher.published
    assert isinstance(kept, RawWebhook)
    assert kept.inline_bytes() == b"{}"
    assert (kept.reason_kind, kept.reason) == ("adapter_error", "the parser failed on this request")
    assert kept.content_type == "text/x-odd"
    assert kept.element is None
    assert (kept.channel_id, kept.tenant_id, kept.transport) == (CHANNEL.id, TENANT, "telegram")
    assert kept.correlation_id == response.headers["x-correlation-id"]


class CrashingVerify(FakeAdapter):
    def verify(self, request: RawRequest, ctx: ParseContext) -> None:
        raise RuntimeError("bug in the signature check")


async def test_unexpected_failure_while_authenticating_is_401_and_nothing_kept() -> None:
    env = Env(CrashingVerify())
    async with env.client() as client:
        response = await post(client)
    assert response.status_code == 401
    assert response.json() == {"error": "request could not be authenticated"}
    assert env.publisher.published == []


async def test_unprocessable_body_is_kept_with_its_reason(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, n=-1)
    assert response.status_code == 200
    [kept] = env.publisher.kept()
    assert (kept.reason_kind, kept.reason) == ("unprocessable", "n: must not be negative")
    assert kept.inline_bytes() == b'{"n": -1}'
    assert kept.body_ref is None
    assert kept.size_bytes == 9
    assert "x-secret" not in kept.headers  # nothing secret travels with the kept body


async def test_kept_elements_are_published_beside_the_events(env: Env) -> None:
    with capture_logs() as logs:
        async with env.client() as client:
            response = await post(client, content=b'{"n": 2, "bad": 2}')
    warnings = [line for line in logs if line["event"] == "webhook kept unprocessed"]
    assert [(w["log_level"], w["reason"], w["reason_kind"]) for w in warnings] == [
        ("warning", "bad.0: broken", "unprocessable"),
        ("warning", "bad.1: broken", "unprocessable"),
    ]
    assert not any('{"el"' in str(value) for w in warnings for value in w.values())  # no body
    assert response.status_code == 200
    events = [e for e in env.publisher.published if isinstance(e, MessageEvent)]
    kept = env.publisher.kept()
    assert len(events) == 2
    assert [(k.element, k.inline_bytes(), k.reason) for k in kept] == [
        ("bad.0", b'{"el":0}', "bad.0: broken"),
        ("bad.1", b'{"el":1}', "bad.1: broken"),
    ]
    assert len({k.record_id for k in kept}) == 2


async def test_same_kept_body_has_the_same_record_id(env: Env) -> None:
    async with env.client() as client:
        await post(client, n=-1)
        await post(client, n=-1)
    first, second = env.publisher.kept()
    assert first.record_id == second.record_id


async def test_kept_publish_failure_is_503(env: Env) -> None:
    env.publisher.error = PublishUnavailable("broker down")
    async with env.client() as client:
        response = await post(client, n=-1)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


class MemoryClaimCheck:
    def __init__(self, fail: bool = False) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.fail = fail

    async def put(self, data: bytes, content_type: str) -> str:
        if self.fail:
            raise OSError("store down")
        url = f"memory://{len(self.objects)}"
        self.objects[url] = (data, content_type)
        return url


async def test_large_kept_body_goes_through_the_claim_check(env: Env) -> None:
    env.claim_check = store = MemoryClaimCheck()
    env.inline_max_bytes = 16
    body = b'{"n": -1, "pad": "' + b"x" * 100 + b'"}'
    async with env.client() as client:
        response = await post(client, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    [kept] = env.publisher.kept()
    assert kept.body is None
    assert kept.body_ref is not None
    assert store.objects[kept.body_ref] == (body, "application/json")


@pytest.mark.parametrize("store", [None, MemoryClaimCheck(fail=True)])
async def test_large_kept_body_without_a_working_store_is_503(
    env: Env, store: MemoryClaimCheck | None
) -> None:
    env.claim_check = store
    env.inline_max_bytes = 16
    with capture_logs() as logs:
        async with env.client() as client:
            response = await post(client, content=b'{"n": -1, "pad": "' + b"x" * 100 + b'"}')
    [warning] = [line for line in logs if line["event"] == "webhook bytes not stored"]
    assert warning["log_level"] == "warning"
    assert ("no media store" if store is None else "claim check failed") in warning["reason"]
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert env.publisher.published == []


@pytest.mark.parametrize(
    "url",
    [
        f"/webhooks/telegram/{uuid.uuid4()}",  # unknown
        f"/webhooks/telegram/{DISABLED.id}",  # disabled
        f"/webhooks/telegram/{SMS_CHANNEL.id}",  # another transport's channel
        "/webhooks/telegram/not-a-uuid",  # malformed
    ],
)
async def test_unknown_channel_is_404(env: Env, url: str) -> None:
    async with env.client() as client:
        response = await post(client, url)
    assert response.status_code == 404
    assert response.json() == {"error": "unknown channel"}
    assert env.adapter.seen == []


@pytest.mark.parametrize("transport", ["sms", "fax"])  # known but not loaded / not a transport
async def test_unknown_transport_is_404(env: Env, transport: str) -> None:
    async with env.client() as client:
        response = await post(client, f"/webhooks/{transport}/{SMS_CHANNEL.id}")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown transport"}


async def test_declared_body_over_limit_is_413_before_lookup(env: Env) -> None:
    env.channels.error = OSError("must not be asked")
    async with env.client() as client:
        response = await post(client, content=b"x" * 2049)
    assert response.status_code == 413
    assert response.json() == {"error": "body too large"}


async def test_streamed_body_over_limit_is_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 1000

    async with env.client() as client:
        response = await post(client, content=chunks())
    assert response.status_code == 413
    assert env.adapter.seen == []


async def test_streamed_body_within_limit_is_read_whole(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"n":'
        yield b" 2}"

    async with env.client() as client:
        response = await post(client, content=chunks())
    assert response.status_code == 200
    assert env.adapter.seen[0][0].body == b'{"n": 2}'
    assert len(env.publisher.published) == 2


async def test_invalid_content_length_is_400(env: Env) -> None:
    async with env.client() as client:
        response = await post(client, headers={"content-length": "12x"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "error", [PublishUnavailable("broker down"), RuntimeError("bug in the publisher")]
)
async def test_publish_failure_is_503_with_retry_after(env: Env, error: Exception) -> None:
    env.publisher.error = error
    async with env.client() as client:
        response = await post(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": "temporarily unavailable"}


async def test_event_over_the_brokers_limit_is_413_without_retry_after(env: Env) -> None:
    env.publisher.error = EventTooLarge("event too large for the broker")
    async with env.client() as client:
        response = await post(client)
    assert response.status_code == 413
    assert "retry-after" not in response.headers
    assert response.json() == {"error": "event too large for the broker"}


@pytest.mark.parametrize("error", [OSError("connection refused"), TimeoutError()])
async def test_channel_lookup_failure_is_503(env: Env, error: Exception) -> None:
    env.channels.error = error
    async with env.client() as client:
        response = await post(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


async def test_correlation_id_is_taken_over_when_safe(env: Env) -> None:
    async with env.client() as client:
        given = await post(client, headers={"x-request-id": "req-1.A_b"})
        fresh = await post(client)
        unsafe = await post(client, headers={"x-correlation-id": "bad id\n"})
        rejected = await post(client, headers={"x-request-id": "r-2", "x-secret": "no"})
    assert given.headers["x-correlation-id"] == "req-1.A_b"
    assert env.adapter.seen[0][1].correlation_id == "req-1.A_b"
    assert len(fresh.headers["x-correlation-id"]) == 32
    assert unsafe.headers["x-correlation-id"] != "bad id\n"
    assert rejected.headers["x-correlation-id"] == "r-2"


async def test_get_without_handshake_is_405(env: Env) -> None:
    async with env.client() as client:
        response = await client.get(URL)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_get_with_handshake_returns_plain_text() -> None:
    env = Env(HandshakeAdapter())
    async with env.client() as client:
        ok = await client.get(URL, params={"hub.verify_token": "s3cr3t", "hub.challenge": "1158"})
        bad = await client.get(URL, params={"hub.verify_token": "nope", "hub.challenge": "1"})
    assert ok.status_code == 200
    assert ok.text == "1158"
    assert ok.headers["content-type"].startswith("text/plain")
    assert bad.status_code == 401


async def test_healthz(env: Env) -> None:
    async with env.client() as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_names_the_failing_dependency(env: Env) -> None:
    async with env.client() as client:
        ready = await client.get("/readyz")
        env.publisher.ready = False
        not_ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"] == {"database": "ok", "kafka": "failed"}


async def test_real_telegram_adapter_end_to_end(env: Env) -> None:
    from ingest.transports import telegram

    env.adapters = {"telegram": telegram.TelegramAdapter()}
    body = (PAYLOADS / "text_official.json").read_bytes()
    headers = {"content-type": "application/json", "x-request-id": "c1"}
    async with env.client() as client:
        ok = await client.post(
            URL, content=body, headers={**headers, telegram.SECRET_HEADER: "s3cr3t"}
        )
        forged = await client.post(
            URL, content=body, headers={**headers, telegram.SECRET_HEADER: "x"}
        )
    assert ok.status_code == 200
    assert [e.correlation_id for e in env.publisher.published] == ["c1"]
    assert forged.status_code == 401
    assert len(env.publisher.published) == 1
