"""Kafka side of the bench: loading the topic, the raw-consume ceiling (phase a), and the
consumer group's committed offsets that the consumer and gateway phases wait for."""

from __future__ import annotations

import asyncio
import collections
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ingest.bench.measure import (
    IDLE_TIMEOUT_S,
    BenchError,
    PhaseResult,
    cpu_share,
    cpu_snapshot,
)
from ingest.bench.workload import Workload
from ingest.config import Settings
from ingest.topics import ensure_topics

# Producer of the load phase: large batches, a little linger; not the gateway's producer.
LOAD_LINGER_MS = 20
LOAD_BATCH_BYTES = 512 * 1024


async def load_topic(settings: Settings, workload: Workload) -> PhaseResult:
    """Create the run's topics and produce every delivery, keyed by conversation like the
    gateway. Returns per-partition record counts in `extra["partitions"]`."""
    await ensure_topics(settings)
    topic = settings.inbound_topic("telegram")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-bench-loader",
        acks="all",
        enable_idempotence=False,
        linger_ms=LOAD_LINGER_MS,
        max_batch_size=LOAD_BATCH_BYTES,
        max_request_size=4 * LOAD_BATCH_BYTES,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [
            await producer.send(topic, d.value, key=d.key, headers=d.headers)
            for d in workload.deliveries
        ]
        await producer.flush()
        metadata = await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    per_partition = collections.Counter(m.partition for m in metadata)
    if sum(per_partition.values()) != len(workload.deliveries):
        raise BenchError("load: the broker did not acknowledge every record")
    return PhaseResult(
        f"load (producer, linger {LOAD_LINGER_MS} ms)",
        len(metadata),
        seconds,
        {
            "topic": topic,
            "partitions": {str(p): per_partition[p] for p in sorted(per_partition)},
            "linger_ms": LOAD_LINGER_MS,
            "max_batch_size": LOAD_BATCH_BYTES,
        },
    )


# --- a. Kafka ceiling ----------------------------------------------------------------------


async def kafka_ceiling(settings: Settings, expected: int) -> PhaseResult:
    """Raw consume of the whole topic, nothing decoded, aiokafka's default fetch sizes (those
    the service's subscriber runs with). Counts records: Tansu's high watermark is unreliable."""
    topic = settings.inbound_topic("telegram")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-bench-raw",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            raise BenchError(f"kafka ceiling: topic {topic} has no partitions")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count, fetches = 0, 0
        progress = time.monotonic()
        before = cpu_snapshot()
        first = time.perf_counter()  # the first fetch is part of the measured time
        while count < expected:
            batch = await consumer.getmany(timeout_ms=500)
            got = sum(len(records) for records in batch.values())
            if got:
                count += got
                fetches += 1
                progress = time.monotonic()
            elif time.monotonic() - progress > IDLE_TIMEOUT_S:
                raise BenchError(f"kafka ceiling: {count} of {expected} records, then nothing")
        seconds = time.perf_counter() - first
        after = cpu_snapshot()
    finally:
        await consumer.stop()
    if count != expected:
        raise BenchError(f"kafka ceiling: read {count} records, produced {expected}")
    extra = {"getmany_calls_with_data": fetches, "cpu_share": cpu_share(before, after, seconds)}
    return PhaseResult("a  Kafka ceiling (raw consume)", count, seconds, extra)


async def committed_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id="crm-ingest-bench-offsets",
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        await consumer.topics()
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in parts}
    finally:
        await consumer.stop()


async def wait_committed(settings: Settings, partitions: dict[str, int]) -> dict[int, int]:
    """The group's committed offsets must reach the end of every partition (the last commit
    follows the last DB commit by a round trip)."""
    topic = settings.inbound_topic("telegram")
    want = {int(p): n for p, n in partitions.items()}
    deadline = time.monotonic() + 15
    while True:
        got = await committed_offsets(settings, topic)
        if all(got.get(p, 0) >= n for p, n in want.items()):
            return got
        if time.monotonic() > deadline:
            raise BenchError(f"consumer: committed offsets {got}, expected {want}")
        await asyncio.sleep(0.2)


async def wait_committed_total(settings: Settings, records: int) -> None:
    """The consumer's group has committed `records` records of the telegram topic: no
    backlog is left when the latency run starts."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S + 30
    while True:
        got = await committed_offsets(settings, settings.inbound_topic("telegram"))
        if sum(got.values()) >= records:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"gateway: consumer committed {sum(got.values())} of {records}")
        await asyncio.sleep(0.2)
