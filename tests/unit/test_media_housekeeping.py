"""The media worker's sweep of leftovers in the object store: at start, then periodically, with
an age no live put can reach, and a store that is down does not stop it."""

from __future__ import annotations

import asyncio

from handlers.media.runtime import leftover_age_s, sweep_store
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


async def test_sweeps_at_start_then_every_interval_and_survives_a_store_that_is_down() -> None:
    settings = load_settings(media_download_deadline_s=120)
    stop = asyncio.Event()
    store = CountingStore(stop, rounds=3)
    await asyncio.wait_for(sweep_store(store, settings, stop, interval_s=0.01), 5)  # type: ignore[arg-type]
    assert store.ages == [240.0, 240.0, 240.0]
    assert leftover_age_s(settings) == 2 * settings.media_download_deadline_s


async def test_stop_ends_the_wait_between_sweeps() -> None:
    stop = asyncio.Event()
    store = CountingStore(stop, rounds=99)
    task = asyncio.create_task(sweep_store(store, load_settings(), stop, interval_s=3600))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)  # not an hour
    assert len(store.ages) == 1  # the sweep at start
