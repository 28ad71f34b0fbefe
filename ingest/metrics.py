"""Prometheus metrics of the gateway and the consumer (default registry, defined once).

The rest of the code calls the small `observe_*` / `set_lag` functions, never the metric
objects, so names, labels and buckets live in this one place. The gateway serves them on its
own `GET /metrics` (`metrics_response`); the consumer process, which has no HTTP server,
starts one with `start_metrics_server`. In `crm-ingest dev` both run in one process, so the
gateway's `/metrics` shows the consumer series too.

Label values are bounded: a transport that is not one of the four becomes `unknown`, so a
scanner hitting `/webhooks/<junk>/...` cannot grow the series without limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from ingest.config import TRANSPORTS
from ingest.logs import get_logger

log = get_logger(__name__)

UNKNOWN = "unknown"
OUTCOMES = ("created", "edited", "already_present", "dead_lettered", "invalid")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DB_BUCKETS = (*_LATENCY_BUCKETS, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)

# `*_created` timestamps double the series and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# --- gateway -------------------------------------------------------------------------------

WEBHOOK_REQUESTS = Counter(
    "crm_ingest_webhook_requests",
    "Webhook responses sent, by transport and HTTP status.",
    ["transport", "status"],
)
PUBLISH_SECONDS = Histogram(
    "crm_ingest_publish_seconds",
    "Time to get a request's events acknowledged by the broker (failed attempts included).",
    ["transport"],
    buckets=_LATENCY_BUCKETS,
)
PUBLISHED_EVENTS = Counter(
    "crm_ingest_published_events",
    "Events acknowledged by the broker.",
    ["transport"],
)
WEBHOOKS_KEPT = Counter(
    "crm_ingest_webhooks_kept",
    "Authenticated webhooks (or batch elements) kept on the dead-letter topic instead of "
    "becoming events, by transport and reason kind.",
    ["transport", "reason_kind"],
)

# --- consumer ------------------------------------------------------------------------------

CONSUMER_EVENTS = Counter(
    "crm_ingest_consumer_events",
    "Consumed records by outcome; the outcomes do not overlap "
    "(dead_lettered excludes the invalid ones, which are dead-lettered too).",
    ["outcome"],
)
CONSUMER_BATCH_SIZE = Histogram(
    "crm_ingest_consumer_batch_size",
    "Records per consumed batch.",
    buckets=_BATCH_BUCKETS,
)
CONSUMER_DB_SECONDS = Histogram(
    "crm_ingest_consumer_db_seconds",
    "Time spent on one batch until its PostgreSQL commit (retries included).",
    buckets=_DB_BUCKETS,
)
DEAD_LETTERS = Counter(
    "crm_ingest_dead_letters",
    "Records sent to the dead-letter topic (invalid ones included).",
)
CONSUMER_LAG = Gauge(
    "crm_ingest_consumer_lag",
    "Records behind the partition's high watermark after the last handled batch.",
    ["topic", "partition"],
)

# --- media fetching ------------------------------------------------------------------------

MEDIA_OUTCOMES = ("stored", "failed", "retried", "lost_lease")
MEDIA_JOBS = Counter(
    "crm_ingest_media_jobs",
    "Fetch attempts by transport and outcome: stored, failed (for good), retried (a transient "
    "failure, due again later), lost_lease (another worker took the job over).",
    ["transport", "outcome"],
)
MEDIA_BYTES = Counter(
    "crm_ingest_media_bytes",
    "Bytes of attachments stored.",
    ["transport"],
)
MEDIA_FETCH_SECONDS = Histogram(
    "crm_ingest_media_fetch_seconds",
    "Time from claiming a fetch job to its outcome (download and store included).",
    ["transport"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
MEDIA_QUEUE_DEPTH = Gauge("crm_ingest_media_queue_depth", "Pending fetch jobs.")
MEDIA_OLDEST_PENDING = Gauge(
    "crm_ingest_media_oldest_pending_seconds",
    "Age of the oldest pending fetch job since it was queued (0 when none).",
)

# Series that exist from the start at 0, so rates and alerts work before the first event.
for _transport in TRANSPORTS:
    PUBLISHED_EVENTS.labels(_transport)
    PUBLISH_SECONDS.labels(_transport)
    if _transport != "email":  # email's bytes come with the webhook: no fetch jobs
        MEDIA_BYTES.labels(_transport)
        for _media_outcome in MEDIA_OUTCOMES:
            MEDIA_JOBS.labels(_transport, _media_outcome)
for _outcome in OUTCOMES:
    CONSUMER_EVENTS.labels(_outcome)


# --- reply dispatcher -----------------------------------------------------------------------

SEND_OUTCOMES = (
    "accepted",
    "rejected",
    "refused",
    "transient_exhausted",
    "partial",
    "unknown",
    "dead_lettered",
    "already_done",
)
OUTBOUND_COMMANDS = Counter(
    "crm_ingest_outbound_commands",
    "message.send commands by transport and outcome: accepted, rejected (by the provider), "
    "refused (by a rule before the call), transient_exhausted, partial (some parts of a "
    "split text went out), unknown, dead_lettered, "
    "already_done (redelivered or replayed).",
    ["transport", "outcome"],
)
SEND_SECONDS = Histogram(
    "crm_ingest_send_seconds",
    "Time of one provider call of the reply dispatcher, failed ones included.",
    ["transport"],
    buckets=_DB_BUCKETS,
)


def observe_command(transport: str, outcome: str) -> None:
    OUTBOUND_COMMANDS.labels(transport_label(transport), outcome).inc()


def observe_send(transport: str, seconds: float) -> None:
    SEND_SECONDS.labels(transport_label(transport)).observe(seconds)


def transport_label(transport: str) -> str:
    return transport if transport in TRANSPORTS else UNKNOWN


def observe_request(transport: str, status: int) -> None:
    """One webhook response (any status, handshakes included)."""
    WEBHOOK_REQUESTS.labels(transport_label(transport), str(status)).inc()


def observe_kept(transport: str, reason_kind: str) -> None:
    WEBHOOKS_KEPT.labels(transport_label(transport), reason_kind).inc()


def observe_publish(transport: str, seconds: float, events: int) -> None:
    """One publish attempt: its duration, and the events the broker acknowledged (0 if failed)."""
    label = transport_label(transport)
    PUBLISH_SECONDS.labels(label).observe(max(seconds, 0.0))
    if events > 0:
        PUBLISHED_EVENTS.labels(label).inc(events)


def observe_batch(
    size: int,
    db_seconds: float,
    *,
    created: int = 0,
    edited: int = 0,
    already_present: int = 0,
    dead_lettered: int = 0,
    invalid: int = 0,
) -> None:
    """One handled (committed) consumer batch.

    `dead_lettered` is every record of the batch sent to the dead-letter topic, the `invalid`
    ones included (as `handlers.ingestor.BatchReport` counts them); the `outcome` label keeps
    them apart, `crm_ingest_dead_letters_total` counts them all.
    """
    CONSUMER_BATCH_SIZE.observe(size)
    CONSUMER_DB_SECONDS.observe(max(db_seconds, 0.0))
    for outcome, count in (
        ("created", created),
        ("edited", edited),
        ("already_present", already_present),
        ("dead_lettered", dead_lettered - invalid),
        ("invalid", invalid),
    ):
        if count > 0:
            CONSUMER_EVENTS.labels(outcome).inc(count)
    if dead_lettered > 0:
        DEAD_LETTERS.inc(dead_lettered)


def observe_media(transport: str, outcome: str, seconds: float, stored_bytes: int = 0) -> None:
    """One fetch attempt's outcome (one of MEDIA_OUTCOMES)."""
    label = transport_label(transport)
    MEDIA_JOBS.labels(label, outcome).inc()
    MEDIA_FETCH_SECONDS.labels(label).observe(max(seconds, 0.0))
    if stored_bytes > 0:
        MEDIA_BYTES.labels(label).inc(stored_bytes)


def set_media_queue(pending: int, oldest_age_s: float) -> None:
    MEDIA_QUEUE_DEPTH.set(max(pending, 0))
    MEDIA_OLDEST_PENDING.set(max(oldest_age_s, 0.0))


def set_lag(topic: str, partition: int, lag: int) -> None:
    CONSUMER_LAG.labels(topic, str(partition)).set(max(lag, 0))


class _Offsets(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


def observe_lag(consumer: Any, records: Iterable[_Offsets]) -> None:
    """Set the lag of every partition in `records` from the consumer's high watermarks.

    `consumer` is the aiokafka consumer (FastStream: `message.consumer`); its `highwater(tp)`
    is what the broker reported with the last fetch, or None before any fetch — then the
    partition is skipped. Never raises: metrics must not fail a batch.
    """
    try:
        from aiokafka.structs import TopicPartition

        last: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            last[key] = max(last.get(key, -1), record.offset)
        for (topic, partition), offset in last.items():
            highwater = consumer.highwater(TopicPartition(topic, partition))
            if highwater is not None:
                set_lag(topic, partition, highwater - offset - 1)
    except Exception:  # a client API change must not stop ingest
        log.debug("consumer lag not available", exc_info=True)


def metrics_response() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


@dataclass(slots=True)
class MetricsServer:
    """A running `/metrics` endpoint of `start_metrics_server`."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve `/metrics` from a daemon thread (the consumer process); port 0 picks a free one."""
    server, thread = start_http_server(port, addr=host)
    return MetricsServer(server, thread)
