"""The fetch worker with its resources, as a lifespan: inside `crm-ingest consume` (beside the
batch consumer) and alone in `crm-ingest media work`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg

from handlers.media import jobs
from handlers.media.worker import DB_ERRORS, MediaWorker
from ingest.channels import ChannelDirectory
from ingest.config import Settings
from ingest.logs import get_logger
from ingest.objectstore import ObjectStore, StoreError, open_store
from ingest.transports.fetching import load_media_sources
from ingest.transports.http_download import media_http_client

log = get_logger("crm_ingest.media")

# How often the worker tidies up: one directory listing (or one ListMultipartUploads) and one
# indexed DELETE, so cheap.
HOUSEKEEPING_INTERVAL_S = 300.0


def leftover_age_s(settings: Settings) -> float:
    """A put lasts at most one download's deadline (the gateway's are shorter): twice that
    untouched, no live put can own it."""
    return 2 * settings.media_download_deadline_s


async def housekeeping(
    store: ObjectStore,
    pool: asyncpg.Pool,
    settings: Settings,
    stop: asyncio.Event,
    interval_s: float = HOUSEKEEPING_INTERVAL_S,
) -> None:
    """At start, then every `interval_s` until `stop`: remove what killed puts left in the
    store, and forget jobs stored longer ago than their retention. A failure waits for the
    next round."""
    while not stop.is_set():
        try:
            removed = await store.sweep(leftover_age_s(settings))
            if removed:
                log.info("object store leftovers removed", removed=removed)
        except StoreError as exc:
            log.warning("object store sweep failed, will retry", error=str(exc))
        try:
            pruned = await jobs.prune_stored(pool, settings.media_job_retention_hours)
            if pruned:
                log.info("stored media jobs forgotten", pruned=pruned)
        except DB_ERRORS as exc:
            log.warning("media job pruning failed, will retry", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


@contextlib.asynccontextmanager
async def running_media_worker(
    settings: Settings, pool: asyncpg.Pool, *, on_queued: Callable[[], None] = lambda: None
) -> AsyncIterator[MediaWorker | None]:
    """Run the worker until the block exits; yields None (and runs nothing) when
    CRM_INGEST_MEDIA_STORE is not set: jobs then wait, pending, for a worker that has a store."""
    if not settings.media_store:
        log.warning("media fetching is off: CRM_INGEST_MEDIA_STORE is not set; jobs stay pending")
        yield None
        return
    store = open_store(settings.media_store)
    # Credentials are read for every attempt, never cached: after `crm-ingest channel set`,
    # the next attempt uses the new ones.
    channels = ChannelDirectory(settings.model_copy(update={"channel_cache_ttl_s": 0.0}), pool)
    client = media_http_client()
    try:
        worker = MediaWorker(
            settings,
            pool,
            load_media_sources(settings, client),
            store,
            channels,
            on_queued=on_queued,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        tidying = asyncio.create_task(housekeeping(store, pool, settings, stop))
        try:
            yield worker
        finally:
            stop.set()
            await task
            await tidying
    finally:
        await client.aclose()
        await store.close()


async def run_media_work(settings: Settings, stop: asyncio.Event) -> None:
    """`crm-ingest media work`: the worker alone, with its own pool and an outbox relay (its
    chat events go out even when no consumer runs; the relay's advisory lock keeps one
    publishing at a time)."""
    from handlers.chat_events import OutboxRelay
    from handlers.pipeline import producer_publishers
    from sql.db import create_pool

    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    try:
        async with producer_publishers(settings, client_id="crm-ingest-media") as (_, publish):
            relay = OutboxRelay(pool, publish, retention_hours=settings.outbox_retention_hours)
            relay_stop = asyncio.Event()
            sweep = asyncio.create_task(relay.run(settings.outbox_interval_s, relay_stop))
            try:
                async with running_media_worker(settings, pool, on_queued=relay.wake):
                    log.info("media worker running", concurrency=settings.media_concurrency)
                    await stop.wait()
            finally:
                relay_stop.set()
                await sweep
    finally:
        await pool.close()
