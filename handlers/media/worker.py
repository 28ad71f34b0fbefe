"""The fetch worker: claims due jobs, streams each download into the object store, and records
the outcome with its chat event.

- Several jobs run at once (`media_concurrency` per process); claims keep at most
  `media_per_channel` leased per channel across all workers (sql: claim_media_jobs).
- A claimed job is leased for `media_lease_s` and the lease is renewed while it runs. A
  SIGKILLed worker stops renewing, and its job is claimed again once the lease runs out.
- Bytes go to `media/<tenant>/<upload id>`: a retry writes the same key, and the store's atomic
  put leaves either the whole object there or nothing. The download raises a size or digest
  mismatch from inside the stream, before the put completes, so a corrupt object never lands
  under its key.
- FetchPermanent, or a file over CRM_INGEST_MEDIA_MAX_BYTES: the job fails with its short
  reason. FetchTransient, an unavailable store, or anything unexpected: the job is due again
  after an exponential backoff with jitter (at least the provider's retry-after), until the
  retry window (from queueing) would be passed; then it fails with the last reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from handlers.media import jobs
from handlers.media.content import choose_type
from handlers.media.jobs import Job, Stored
from ingest import metrics
from ingest.config import Settings, Transport
from ingest.credentials import SealedSecretError
from ingest.logs import get_logger
from ingest.objectstore import ObjectStore, ObjectTooLarge, StoreError, StoreUnavailable
from ingest.transports.fetching import FetchPermanent, FetchTransient, MediaRef, MediaSource

log = get_logger("crm_ingest.media")

QUEUE_STATS_INTERVAL_S = 5.0
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


class ChannelConfigs(Protocol):
    """Where a job's credentials come from (`ingest.channels.ChannelDirectory`)."""

    async def get(self, channel_id: str) -> Any: ...


class LeaseLost(Exception):
    """Another worker holds the job now; this one drops it without a word to the database."""


def object_key(job: Job) -> str:
    """One key per upload: every attempt at it writes the same object."""
    return f"media/{job.tenant_id}/{job.upload_id}"


def backoff_s(attempts: int, base_s: float, max_s: float, draw: Callable[[], float]) -> float:
    """Exponential in the attempts so far, jittered to 50-100 % of it."""
    return min(max_s, base_s * 2.0 ** max(attempts - 1, 0)) * (0.5 + draw() / 2)


class MediaWorker:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        sources: Mapping[Transport, MediaSource],
        store: ObjectStore,
        channels: ChannelConfigs,
        *,
        on_queued: Callable[[], None] = lambda: None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._sources = sources
        self._store = store
        self._channels = channels
        self._on_queued = on_queued  # chat events were queued in the outbox: wake the relay
        self._draw = draw
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._stats_due = 0.0

    def wake(self) -> None:
        """Claim now rather than at the next poll (new jobs were committed)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and process jobs until `stop`; then let running jobs finish within the
        shutdown timeout, and hand back the leases of those that do not."""
        settings = self._settings
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            free = settings.media_concurrency - len(self._running)
            claimed: list[Job] = []
            try:
                if free > 0:
                    claimed = await jobs.claim(
                        self._pool,
                        free,
                        settings.media_per_channel,
                        settings.media_lease_s,
                        scan=max(100, 20 * free),
                    )
                await self._report_queue()
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                log.warning("media claim failed, will retry", error=repr(exc), attempt=failures)
            for job in claimed:
                task = asyncio.create_task(self._process(job))
                self._running.add(task)
                task.add_done_callback(self._finished)
            if claimed and len(claimed) == free:
                continue  # every slot filled: more may be due as soon as one frees
            delay = settings.media_poll_interval_s * min(2**failures, 30)
            await _first(stop.wait(), self._wake.wait(), within=delay)
        await self._drain()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("media job crashed", error=repr(task.exception()))

    async def _drain(self) -> None:
        if not self._running:
            return
        _, pending = await asyncio.wait(self._running, timeout=self._settings.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _report_queue(self) -> None:
        now = time.monotonic()
        if now >= self._stats_due:
            self._stats_due = now + QUEUE_STATS_INTERVAL_S
            metrics.set_media_queue(*await jobs.queue_stats(self._pool))

    # --- one job ------------------------------------------------------------------------

    async def _process(self, job: Job) -> None:
        started = time.monotonic()
        holder = asyncio.current_task()
        assert holder is not None
        lost = asyncio.Event()
        keeper = asyncio.create_task(self._keep_lease(job, holder, lost))
        outcome = "lost_lease"
        stored_bytes = 0
        bound = log.bind(upload_id=job.upload_id, transport=job.transport, attempt=job.attempts)
        try:
            try:
                stored = await self._fetch(job)
            except FetchPermanent as exc:
                outcome = await self._fail(job, exc.reason)
            except FetchTransient as exc:
                outcome = await self._retry_later(job, exc.reason, exc.retry_after)
            except ObjectTooLarge:
                reason = f"larger than CRM_INGEST_MEDIA_MAX_BYTES ({self._max_bytes} bytes)"
                outcome = await self._fail(job, reason)
            except StoreUnavailable as exc:
                outcome = await self._retry_later(job, f"object store unavailable: {exc}", None)
            except StoreError as exc:  # refused by the store: an operator fixes it, then it works
                outcome = await self._retry_later(job, f"object store refused: {exc}", None)
            except SealedSecretError as exc:  # names the channel and key, never a value
                outcome = await self._fail(job, f"channel credentials refused: {exc}")
            else:
                event = await jobs.complete_stored(self._pool, job, stored)
                if event is not None:
                    outcome, stored_bytes = "stored", stored.size
                    self._on_queued()
        except asyncio.CancelledError:
            if lost.is_set():
                holder.uncancel()  # our own keeper's cancel: the job is simply dropped
                bound.warning("media job taken over by another worker")
            else:  # shutting down: hand the job back now rather than when the lease ends
                await asyncio.shield(self._release(job))
                raise
        except DB_ERRORS as exc:
            # The outcome was not recorded; the lease runs out and the job is redone (same key).
            bound.warning("media job outcome not recorded, will be redone", error=repr(exc))
        except Exception as exc:
            bound.exception("media job failed unexpectedly")
            outcome = await self._retry_later(job, f"unexpected error: {type(exc).__name__}", None)
        finally:
            keeper.cancel()
        metrics.observe_media(job.transport, outcome, time.monotonic() - started, stored_bytes)
        bound.info("media job done", outcome=outcome, bytes=stored_bytes)

    @property
    def _max_bytes(self) -> int:
        return self._settings.media_max_bytes

    async def _fetch(self, job: Job) -> Stored:
        channel = await self._channels.get(str(job.channel_id))
        if channel is None:
            raise FetchPermanent(f"channel {job.channel_id} no longer exists")
        source = self._sources.get(job.transport)
        if source is None:
            raise FetchPermanent(f"no media source for transport {job.transport}")
        ref = MediaRef(
            transport=source.transport,
            reference=job.reference,
            declared_size=job.declared_size,
            declared_mimetype=job.declared_mimetype,
            declared_sha256=job.declared_sha256,
        )
        # The download enforces the byte cap, the declared size and the provider's sha256 as
        # its chunks are read, raising from inside the stream: the put then leaves nothing.
        async with source.open(ref, channel.config) as download:
            body = download.chunks()
            head = await anext(body, b"")
            mimetype = choose_type(job.declared_mimetype, download.content_type, head)
            obj = await self._store.put(
                object_key(job),
                _prepend(head, body),
                content_type=mimetype,
                max_bytes=self._max_bytes,
            )
        return Stored(obj.url, obj.size, obj.sha256, mimetype)

    async def _keep_lease(self, job: Job, holder: asyncio.Task[Any], lost: asyncio.Event) -> None:
        lease_s = self._settings.media_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                held = await jobs.renew(self._pool, job, lease_s)
            except DB_ERRORS as exc:
                log.warning("media lease not renewed", upload_id=job.upload_id, error=repr(exc))
                continue
            if not held:
                lost.set()
                holder.cancel()
                return

    async def _fail(self, job: Job, reason: str) -> str:
        # A source names the command that fixes a missing credential, but not the channel.
        reason = reason.replace("<channel id>", str(job.channel_id))
        event = await jobs.complete_failed(self._pool, job, reason)
        if event is None:
            return "lost_lease"
        self._on_queued()
        log.warning("media job failed", upload_id=job.upload_id, reason=reason)
        return "failed"

    async def _retry_later(self, job: Job, reason: str, retry_after: float | None) -> str:
        settings = self._settings
        delay = backoff_s(
            job.attempts,
            settings.media_retry_backoff_s,
            settings.media_retry_backoff_max_s,
            self._draw,
        )
        if retry_after is not None:
            delay = max(delay, retry_after)
        waited = (datetime.now(UTC).replace(tzinfo=None) - job.queued_at).total_seconds()
        if waited + delay > settings.media_retry_window_s:
            window = _duration(settings.media_retry_window_s)
            return await self._fail(
                job, f"gave up after {job.attempts} attempts in {window}: {reason}"
            )
        if not await jobs.postpone(self._pool, job, delay, reason):
            return "lost_lease"
        return "retried"

    async def _release(self, job: Job) -> None:
        try:
            await jobs.postpone(self._pool, job, 0.0, "interrupted by shutdown")
        except DB_ERRORS as exc:
            log.warning("media lease not released", upload_id=job.upload_id, error=repr(exc))


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stream again with its first chunk, which was read to sniff the type."""
    if head:
        yield head
    async for chunk in rest:
        yield chunk


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{seconds:g} s"


async def _first(*waits: Any, within: float) -> None:
    """Until the first of `waits` completes, or `within` seconds."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
