"""ChannelDirectory caching against a fake pool that counts queries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ingest.channels import ChannelDirectory, parse_channel_id
from ingest.config import Settings, load_settings
from ingest.credentials import SealedSecretError, keyring
from sql import QUERIES

TENANT = uuid.UUID("5a9e3c71-2b4d-4e6f-8a1b-3c5d7e9f0a2b")
KNOWN = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
KEYS = keyring(load_settings())  # tests/conftest.py sets CRM_INGEST_SECRETS_KEY for the run


class FakePool:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, dict[str, Any]] = {
            KNOWN: {
                "id": KNOWN,
                "tenant_id": TENANT,
                "transport": "telegram",
                "name": "main",
                "config": {"secret_token": KEYS.seal(KNOWN, "secret_token", "s3cr3t")},
                "enabled": True,
            }
        }
        self.queries = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def fetchrow(self, query: str, *args: Any) -> Any:
        assert query == QUERIES["get_channel"]
        self.queries += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.rows.get(args[0])

    async def fetchval(self, query: str, *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def directory(ttl: float = 30.0) -> tuple[ChannelDirectory, FakePool, Clock]:
    pool, clock = FakePool(), Clock()
    return ChannelDirectory(Settings(channel_cache_ttl_s=ttl), pool, clock=clock), pool, clock


async def test_known_channel_is_cached_for_the_ttl() -> None:
    channels, pool, clock = directory(ttl=30)
    channel = await channels.get(str(KNOWN))
    assert channel is not None
    assert (channel.id, channel.tenant_id, channel.transport) == (KNOWN, TENANT, "telegram")
    assert channel.config == {"secret_token": "s3cr3t"}
    assert channel.enabled
    clock.now += 29
    assert await channels.get(str(KNOWN)) == channel
    assert pool.queries == 1
    pool.rows[KNOWN]["enabled"] = False
    clock.now += 2
    refreshed = await channels.get(str(KNOWN))
    assert refreshed is not None
    assert not refreshed.enabled
    assert pool.queries == 2


async def test_unknown_channel_is_cached_briefly() -> None:
    channels, pool, clock = directory(ttl=30)
    unknown = str(uuid.uuid4())
    assert await channels.get(unknown) is None
    assert await channels.get(unknown) is None
    assert pool.queries == 1
    clock.now += 5.1  # the negative TTL is min(ttl, 5 s)
    assert await channels.get(unknown) is None
    assert pool.queries == 2


async def test_zero_ttl_disables_the_cache() -> None:
    channels, pool, _ = directory(ttl=0)
    await channels.get(str(KNOWN))
    await channels.get(str(KNOWN))
    assert pool.queries == 2


@pytest.mark.parametrize(
    "raw",
    ["", "nope", "0b6f2d4e8a1c4c3e9f7a2d5e6f708192", "{0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192}",
     "0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f70819z", "../../etc/passwd"],
)  # fmt: skip
async def test_malformed_id_makes_no_query(raw: str) -> None:
    channels, pool, _ = directory()
    assert await channels.get(raw) is None
    assert pool.queries == 0


def test_parse_channel_id_accepts_either_case() -> None:
    assert parse_channel_id(str(KNOWN).upper()) == KNOWN


async def test_database_errors_propagate_and_are_not_cached() -> None:
    channels, pool, _ = directory()
    pool.error = OSError("connection refused")
    with pytest.raises(OSError, match="refused"):
        await channels.get(str(KNOWN))
    pool.error = None
    assert await channels.get(str(KNOWN)) is not None
    assert pool.queries == 2


async def test_concurrent_lookups_share_one_query() -> None:
    channels, pool, _ = directory()
    pool.gate = asyncio.Event()
    lookups = [asyncio.create_task(channels.get(str(KNOWN))) for _ in range(10)]
    await asyncio.sleep(0)
    pool.gate.set()
    results = await asyncio.gather(*lookups)
    assert pool.queries == 1
    assert all(r is not None and r.id == KNOWN for r in results)


async def test_invalidate_forces_a_fresh_read() -> None:
    channels, pool, _ = directory()
    await channels.get(str(KNOWN))
    channels.invalidate(KNOWN)
    await channels.get(str(KNOWN))
    assert pool.queries == 2


async def test_ping_reports_database_health() -> None:
    channels, pool, _ = directory()
    assert await channels.ping()
    pool.error = OSError("down")
    assert not await channels.ping()
    assert not await ChannelDirectory(Settings()).ping()  # never opened


@pytest.mark.parametrize(
    "stored",
    [
        "s3cr3t",  # plaintext where a sealed value belongs
        KEYS.seal(KNOWN, "secret_token", "s3cr3t")[:-6] + "AAAAAA",  # altered ciphertext
        KEYS.seal(uuid.uuid4(), "secret_token", "s3cr3t"),  # sealed for another channel
        KEYS.seal(KNOWN, "bot_token", "s3cr3t"),  # sealed under another key name
    ],
)
async def test_a_secret_that_does_not_open_is_refused_not_misread(stored: str) -> None:
    pool = FakePool()
    pool.rows[KNOWN]["config"] = {"secret_token": stored}
    directory = ChannelDirectory(Settings(channel_cache_ttl_s=30), pool)
    with pytest.raises(SealedSecretError):
        await directory.get(str(KNOWN))
    assert pool.queries == 1
    with pytest.raises(SealedSecretError):  # never cached: the next request asks again
        await directory.get(str(KNOWN))
    assert pool.queries == 2
