"""The cached partitioner places every keyed record where aiokafka's DefaultPartitioner does."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner

from ingest.events import chat_key
from ingest.partitioning import CachedKeyPartitioner, key_hash, partition_for

KEYS = [chat_key(uuid.UUID(int=t), chat).encode() for t in range(5) for chat in range(200)]
KEYS += [b"", b"a", "tenant:chat:ü".encode(), bytes(range(256))]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 12, 64])
def test_keyed_records_land_where_the_default_partitioner_puts_them(count: int) -> None:
    partitions = list(range(count))
    cached = CachedKeyPartitioner()
    key_hash.cache_clear()
    for key in KEYS * 2:  # the second pass is answered from the cache
        expected = DefaultPartitioner()(key, partitions, partitions)
        assert cached(key, partitions, partitions) == expected
        assert partition_for(key, partitions) == expected
    assert key_hash.cache_info().misses == len(set(KEYS))  # each key hashed once


def test_partitions_spread_over_all_of_them() -> None:
    assert {partition_for(key, [0, 1, 2, 3]) for key in KEYS} == {0, 1, 2, 3}


def test_keyless_records_go_to_an_available_partition() -> None:
    cached = CachedKeyPartitioner()
    picks = {cached(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert picks == {1, 3}
    assert cached(None, [0, 1], []) in {0, 1}
