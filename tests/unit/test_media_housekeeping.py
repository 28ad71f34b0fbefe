"""The media worker's housekeeping round: at start, then periodically, it sweeps the object
store's leftovers (with an age no live put can reach) and prunes stored jobs; a store or a
database that is down does not stop it."""

from __future__ import annotations

import asyncio

import asyncpg

from handlers.media.runtime import housekeeping, leftover_age_s
from ingest.config import load_settings
from ingest.objectstore import StoreUnavailable


class CountingStore:
    def __init__(self, stop: asyncio.Event, rounds: int) -> None:
        self.ages: list[float] = []
        self._stop = stop
        self._rounds = rounds

    async def sweep(self, older_than_s: float) -> int:
        self.ages.append(older_than_s)
        if len(self.ages) == self._rounds:
            self._stop.set()
        if len(self.ages) == 1:
            raise StoreUnavailable("store down")  # the next round tries again
        return 2


class CountingPool:
    """The one call pruning makes: `execute` of the DELETE, answering its status line."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    async def execute(self, query: str, *args: object) -> str:
        self.calls.append(args)
        if len(self.calls) == 2:
            raise asyncpg.CannotConnectNowError("the database is starting up")
        return "DELETE 3"


async def test_each_round_sweeps_and_prunes_and_survives_what_is_down() -> None:
    settings = load_settings(media_download_deadline_s=120, media_job_retention_hours=48)
    stop = asyncio.Event()
    store, pool = CountingStore(stop, rounds=3), CountingPool()
    rounds = housekeeping(store, pool, settings, stop, interval_s=0.01)  # type: ignore[arg-type]
    await asyncio.wait_for(rounds, 5)
    assert store.ages == [240.0, 240.0, 240.0]  # twice the download deadline
    assert leftover_age_s(settings) == 2 * settings.media_download_deadline_s
    # Round one prunes although the store was down; round two's database error is survived.
    assert pool.calls == [(48, 5000)] * 3


async def test_stop_ends_the_wait_between_rounds() -> None:
    stop = asyncio.Event()
    store = CountingStore(stop, rounds=99)
    rounds = housekeeping(store, CountingPool(), load_settings(), stop, interval_s=3600)  # type: ignore[arg-type]
    task = asyncio.create_task(rounds)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)  # not an hour
    assert len(store.ages) == 1  # the round at start
