"""Which partition a keyed record goes to, as every Kafka client computes it, only cheaper.

aiokafka's `DefaultPartitioner` (murmur2 of the key over all partitions, like the Java client)
runs a pure-Python murmur2 on every send: about 8 µs for a conversation key, a sixth of the
gateway's acknowledged publish. Keys repeat (a conversation's key on every one of its events),
so the hash is kept per key. Records land on exactly the partitions `DefaultPartitioner`
picks; `tests/unit/test_partitioning.py` holds the two together.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner, murmur2

# Distinct keys whose hash is kept: conversations active at once, per process.
KEY_HASHES_CACHED = 1 << 16


@functools.lru_cache(maxsize=KEY_HASHES_CACHED)
def key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition of `partitions` (all of the topic's, sorted) that `key` belongs to."""
    return partitions[key_hash(key) % len(partitions)]


class CachedKeyPartitioner:
    """`AIOKafkaProducer(partitioner=...)`: keyed records as `DefaultPartitioner` places them
    (hash cached), keyless ones spread at random like it does."""

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        return partition_for(key, all_partitions)
