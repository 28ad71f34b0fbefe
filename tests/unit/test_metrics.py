"""Prometheus series, read back the way Prometheus reads them: from the text exposition.

The registry is process-wide, so every assertion is on a difference (before -> after).
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest import metrics
from ingest.config import Settings, Transport
from ingest.errors import PublishUnavailable, Unauthorized, UnprocessablePayload
from ingest.gateway import create_app
from ingest.transports.base import (
    Channel,
    Event,
    ParseContext,
    RawRequest,
    TransportAdapter,
    VerifyThenParse,
    WebhookResult,
)

CHANNEL = Channel(
    id=uuid.UUID("3c6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192"),
    tenant_id=uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b"),
    transport="telegram",
    config={"secret_token": "s3cr3t"},
)
URL = f"/webhooks/telegram/{CHANNEL.id}"


class CountingAdapter(VerifyThenParse):
    """Body `{"n": <events>}` (negative: unprocessable, kept); header `x-secret` must match.
    Events are opaque to the fakes."""

    transport: ClassVar[Transport] = "telegram"

    def verify(self, request: RawRequest, ctx: ParseContext) -> None:
        if request.header("x-secret") != ctx.channel.config["secret_token"]:
            raise Unauthorized("bad secret")

    def parse(self, request: RawRequest, ctx: ParseContext, verified: Any = None) -> WebhookResult:
        n = int(json.loads(request.body)["n"])
        if n < 0:
            raise UnprocessablePayload("n is negative")
        events = [cast(Event, object()) for _ in range(n)]
        return WebhookResult(events=events, ignored=None if n else "nothing to do")


class FakePublisher:
    def __init__(self) -> None:
        self.error: Exception | None = None

    async def publish(self, events: Sequence[Any]) -> None:
        if self.error is not None:
            raise self.error

    async def ping(self) -> bool:
        return True


class FakeChannels:
    async def get(self, channel_id: str) -> Channel | None:
        return CHANNEL if channel_id == str(CHANNEL.id) else None

    async def ping(self) -> bool:
        return True


@dataclass
class Gateway:
    publisher: FakePublisher
    client: httpx.AsyncClient

    async def post(self, n: int = 1, *, secret: str = "s3cr3t", url: str = URL) -> int:
        response = await self.client.post(
            url, content=json.dumps({"n": n}).encode(), headers={"x-secret": secret}
        )
        return response.status_code

    async def scrape(self) -> str:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        return response.text


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    publisher = FakePublisher()
    adapters: dict[Transport, TransportAdapter] = {"telegram": CountingAdapter()}
    app = create_app(Settings(), publisher=publisher, channels=FakeChannels(), adapters=adapters)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield Gateway(publisher, client)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition; 0 when the series is not there yet."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def current(name: str, **labels: str) -> float:
    body, _ = metrics.metrics_response()
    return sample(body.decode(), name, **labels)


async def test_metrics_endpoint_serves_the_text_format(gateway: Gateway) -> None:
    response = await gateway.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE crm_ingest_webhook_requests_total counter" in response.text
    # Pre-created series are there before any traffic.
    assert 'crm_ingest_consumer_events_total{outcome="already_present"}' in response.text
    assert 'crm_ingest_published_events_total{transport="email"}' in response.text


async def test_webhook_responses_are_counted_by_transport_and_status(gateway: Gateway) -> None:
    name = "crm_ingest_webhook_requests_total"
    before = await gateway.scrape()
    assert await gateway.post() == 200
    assert await gateway.post(2) == 200
    assert await gateway.post(secret="wrong") == 401
    assert await gateway.post(url=f"/webhooks/telegram/{uuid.uuid4()}") == 404
    assert await gateway.post(url=f"/webhooks/fax/{CHANNEL.id}") == 404
    after = await gateway.scrape()

    def delta(**labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta(transport="telegram", status="200") == 2
    assert delta(transport="telegram", status="401") == 1
    assert delta(transport="telegram", status="404") == 1
    # A transport that does not exist is not a label value of its own.
    assert delta(transport="unknown", status="404") == 1
    assert "fax" not in after


async def test_publish_is_timed_and_acknowledged_events_counted(gateway: Gateway) -> None:
    count, total = "crm_ingest_publish_seconds_count", "crm_ingest_published_events_total"
    before = await gateway.scrape()
    assert await gateway.post(3) == 200
    assert await gateway.post(0) == 200  # ignored: nothing to publish, nothing timed
    gateway.publisher.error = PublishUnavailable("broker down")
    assert await gateway.post(2) == 503
    after = await gateway.scrape()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta(count, transport="telegram") == 2  # the failed attempt is timed too
    assert delta(total, transport="telegram") == 3  # but only acknowledged events count
    assert delta("crm_ingest_publish_seconds_sum", transport="telegram") >= 0
    inf = {"transport": "telegram", "le": "+Inf"}
    assert delta("crm_ingest_publish_seconds_bucket", **inf) == 2
    assert delta("crm_ingest_webhook_requests_total", transport="telegram", status="503") == 1


async def test_kept_webhooks_are_counted_by_transport_and_reason_kind(gateway: Gateway) -> None:
    name = "crm_ingest_webhooks_kept_total"
    labels = {"transport": "telegram", "reason_kind": "unprocessable"}
    before = await gateway.scrape()
    assert await gateway.post(-1) == 200
    assert await gateway.post(-2) == 200
    assert await gateway.post(1) == 200
    gateway.publisher.error = PublishUnavailable("broker down")
    assert await gateway.post(-3) == 503  # not acknowledged: not kept
    after = await gateway.scrape()
    assert sample(after, name, **labels) - sample(before, name, **labels) == 2
    published = "crm_ingest_published_events_total"
    transport = {"transport": "telegram"}
    assert sample(after, published, **transport) - sample(before, published, **transport) == 1


def test_observe_batch_moves_the_consumer_series() -> None:
    events = "crm_ingest_consumer_events_total"
    names = [(events, o) for o in metrics.OUTCOMES]
    before = {o: current(n, outcome=o) for n, o in names}
    size_count = current("crm_ingest_consumer_batch_size_count")
    size_sum = current("crm_ingest_consumer_batch_size_sum")
    db_count = current("crm_ingest_consumer_db_seconds_count")
    db_sum = current("crm_ingest_consumer_db_seconds_sum")
    dead = current("crm_ingest_dead_letters_total")

    metrics.observe_batch(
        10, 0.25, created=4, edited=1, already_present=2, dead_lettered=3, invalid=2
    )

    moved = {o: current(n, outcome=o) - before[o] for n, o in names}
    assert moved == {
        "created": 4,
        "edited": 1,
        "already_present": 2,
        "dead_lettered": 1,  # the outcomes do not overlap: 3 dead letters, 2 of them invalid
        "invalid": 2,
    }
    assert sum(moved.values()) == 10
    assert current("crm_ingest_consumer_batch_size_count") - size_count == 1
    assert current("crm_ingest_consumer_batch_size_sum") - size_sum == 10
    assert current("crm_ingest_consumer_db_seconds_count") - db_count == 1
    assert current("crm_ingest_consumer_db_seconds_sum") - db_sum == pytest.approx(0.25)
    assert current("crm_ingest_dead_letters_total") - dead == 3


@dataclass(frozen=True)
class FakeRecord:
    topic: str
    partition: int
    offset: int


class FakeConsumer:
    """aiokafka's `highwater(tp)`: None for a partition not fetched yet."""

    def __init__(self, highwaters: dict[tuple[str, int], int]) -> None:
        self.highwaters = highwaters

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters.get((tp.topic, tp.partition))


def test_lag_is_set_per_partition_from_the_high_watermark() -> None:
    lag = "crm_ingest_consumer_lag"
    metrics.set_lag("t.lag", 7, 42)
    assert current(lag, topic="t.lag", partition="7") == 42
    metrics.set_lag("t.lag", 7, -1)  # a stale watermark never shows a negative lag
    assert current(lag, topic="t.lag", partition="7") == 0

    records = [FakeRecord("t.lag", 0, 5), FakeRecord("t.lag", 0, 9), FakeRecord("t.lag", 1, 3)]
    consumer = FakeConsumer({("t.lag", 0): 15})
    metrics.observe_lag(consumer, records)
    assert current(lag, topic="t.lag", partition="0") == 5  # offsets 10..14 still to come
    body, _ = metrics.metrics_response()
    assert 'partition="1",topic="t.lag"' not in body.decode()  # not reported: left alone

    metrics.observe_lag(object(), records)  # no such API: ignored, never raises


def test_standalone_metrics_server_for_the_consumer() -> None:
    metrics.observe_batch(1, 0.01, created=1)
    server = metrics.start_metrics_server(0, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    assert sample(text, "crm_ingest_consumer_events_total", outcome="created") >= 1


def test_media_series_exist_from_the_start_and_move() -> None:
    jobs, size = "crm_ingest_media_jobs_total", "crm_ingest_media_bytes_total"
    body = metrics.metrics_response()[0].decode()
    assert f'{jobs}{{outcome="lost_lease",transport="sms"}}' in body
    assert "crm_ingest_media_oldest_pending_seconds" in body
    stored = current(jobs, transport="whatsapp", outcome="stored")
    retried = current(jobs, transport="whatsapp", outcome="retried")
    total = current(size, transport="whatsapp")
    fetches = current("crm_ingest_media_fetch_seconds_count", transport="whatsapp")

    metrics.observe_media("whatsapp", "stored", 1.5, 2048)
    metrics.observe_media("whatsapp", "retried", 0.1)
    metrics.set_media_queue(7, 42.5)

    assert current(jobs, transport="whatsapp", outcome="stored") - stored == 1
    assert current(jobs, transport="whatsapp", outcome="retried") - retried == 1
    assert current(size, transport="whatsapp") - total == 2048
    assert current("crm_ingest_media_fetch_seconds_count", transport="whatsapp") - fetches == 2
    assert current("crm_ingest_media_queue_depth") == 7
    assert current("crm_ingest_media_oldest_pending_seconds") == 42.5
