"""The fetch-job queue on real PostgreSQL: jobs are born with their uploads (once), claims keep
the per-channel bound across concurrent workers, leases expire and fence off the old holder,
and `media retry` requeues. No worker runs here (no media store), so jobs stay where the test
puts them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from handlers.media import jobs
from handlers.media.runtime import housekeeping, running_media_worker
from ingest.embedded import ResolvedServices
from tests.fakes.harness import Scripted
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake
from tests.integration.media import (
    BOT_TOKEN,
    JPEG_HEAD,
    PHOTO_ID,
    MediaPipeline,
    media_jobs,
    media_overrides,
    media_pipeline,
    payload,
    settled_jobs,
    wait_jobs,
)
from tests.integration.pipeline import TenantChannel
from tests.integration.rows import wait_messages
from tests.integration.signing import eml, post_email, post_telegram, signed_channel, tg_payload
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pipeline(services: ResolvedServices) -> AsyncIterator[MediaPipeline]:
    # No worker in the consumer: these tests claim and settle jobs by hand.
    async with media_pipeline(services, "mediajobs", media_worker_in_consume=False) as opened:
        yield opened


async def photos(pipeline: MediaPipeline, channel: TenantChannel, count: int, first: int) -> None:
    for n in range(first, first + count):
        update = tg_payload("photo.json")
        update["update_id"] = n
        update["message"]["message_id"] = n
        response = await post_telegram(pipeline.gateway, channel, update)
        assert response.status_code == 200


def files_under(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.is_file()]


async def release_all(pool: asyncpg.Pool) -> None:
    """Tests share the database: leave no job claimable for the next one."""
    await pool.execute(
        "UPDATE ingest_media_jobs SET status = 'stored', lease = NULL, leased_until = NULL"
    )


async def test_a_job_is_created_with_each_provider_upload_and_only_once(
    pipeline: MediaPipeline,
) -> None:
    pool = pipeline.pool
    telegram = await signed_channel(pool, "telegram")
    email = await signed_channel(pool, "email", tenant_id=telegram.tenant_id)
    update = tg_payload("photo.json")
    for _ in range(3):  # Telegram redelivers the same update
        assert (await post_telegram(pipeline.gateway, telegram, update)).status_code == 200
    assert (await post_email(pipeline.gateway, email, eml("attachment"))).status_code == 200
    rows = await wait_messages(pool, telegram.tenant_id, 2)
    await asyncio.sleep(0.5)  # the redeliveries' batches too

    [job] = await media_jobs(pool, telegram.tenant_id)
    uploads = await pool.fetch(
        "SELECT id, path FROM core_uploads WHERE tenant_id = $1 ORDER BY id", telegram.tenant_id
    )
    photo = next(u for u in uploads if u["path"].startswith("telegram:"))
    assert len(uploads) >= 2  # the email's attachments are uploads too, without jobs
    assert (job["upload_id"], job["channel_id"], job["status"]) == (
        photo["id"],
        telegram.channel_id,
        "pending",
    )
    assert job["message_id"] in {m["id"] for m in rows["messages"]}
    record = await pool.fetchrow(
        "SELECT transport, attempts, lease, queued_at <= now() AS queued FROM ingest_media_jobs"
        " WHERE upload_id = $1",
        job["upload_id"],
    )
    assert record is not None
    assert tuple(record) == ("telegram", 0, None, True)
    await release_all(pool)


async def test_claims_keep_the_per_channel_bound_across_concurrent_workers(
    pipeline: MediaPipeline,
) -> None:
    pool = pipeline.pool
    busy = await signed_channel(pool, "telegram")
    quiet = await signed_channel(pool, "telegram")
    await photos(pipeline, busy, 8, 1000)
    await photos(pipeline, quiet, 2, 2000)
    await wait_jobs(pool, busy.tenant_id, 8)
    await wait_jobs(pool, quiet.tenant_id, 2)

    # Four workers claim at once, each wanting 5: at most 3 leased per channel in all.
    claims = await asyncio.gather(*(jobs.claim(pool, 5, 3, 30.0, scan=100) for _ in range(4)))
    claimed = [job for batch in claims for job in batch]
    per_channel = Counter(job.channel_id for job in claimed)
    assert per_channel == {busy.channel_id: 3, quiet.channel_id: 2}
    assert len({job.upload_id for job in claimed}) == len(claimed)  # no job twice
    assert await jobs.claim(pool, 5, 3, 30.0, scan=100) == []  # busy is full, quiet is done

    # One finishes: exactly one more of busy's may go.
    done = next(job for job in claimed if job.channel_id == busy.channel_id)
    assert await jobs.complete_failed(pool, done, "test") is not None
    [next_one] = await jobs.claim(pool, 5, 3, 30.0, scan=100)
    assert next_one.channel_id == busy.channel_id
    await release_all(pool)


async def test_an_expired_lease_is_claimed_again_and_the_old_holder_is_fenced_off(
    pipeline: MediaPipeline,
) -> None:
    pool = pipeline.pool
    channel = await signed_channel(pool, "telegram")
    await photos(pipeline, channel, 1, 3000)
    await wait_jobs(pool, channel.tenant_id, 1)

    [first] = await jobs.claim(pool, 1, 4, 1.0, scan=100)
    assert first.attempts == 1
    assert await jobs.claim(pool, 1, 4, 1.0, scan=100) == []  # leased
    await asyncio.sleep(1.2)  # the holder died: no renewal
    [second] = await jobs.claim(pool, 1, 4, 30.0, scan=100)
    assert (second.upload_id, second.attempts) == (first.upload_id, 2)
    assert second.lease != first.lease

    # The old holder wakes up: nothing it does counts.
    assert await jobs.renew(pool, first, 30.0) is False
    assert await jobs.postpone(pool, first, 0.0, "late") is False
    assert await jobs.complete_failed(pool, first, "late") is None
    assert await jobs.renew(pool, second, 30.0) is True
    [row] = await media_jobs(pool, channel.tenant_id)
    assert (row["status"], row["lease"], row["last_error"]) == ("pending", second.lease, None)
    await release_all(pool)


async def test_retry_requeues_failed_jobs_with_a_new_window(pipeline: MediaPipeline) -> None:
    pool = pipeline.pool
    channel = await signed_channel(pool, "telegram")
    await photos(pipeline, channel, 3, 4000)
    await wait_jobs(pool, channel.tenant_id, 3)
    claimed = await jobs.claim(pool, 3, 4, 30.0, scan=100)
    assert len(claimed) == 3
    for job in claimed:
        assert await jobs.complete_failed(pool, job, "channel has no bot_token") is not None
    failed = sorted(job.upload_id for job in claimed)
    listed = await jobs.list_jobs(pool, "failed", 100)
    assert sorted(j["upload_id"] for j in listed if j["channel_id"] == str(channel.channel_id)) == (
        failed
    )

    assert await jobs.requeue(pool, failed[:1]) == 1
    assert await jobs.requeue(pool, failed[:1]) == 1  # pending, not leased: due now again
    assert await jobs.requeue(pool, None) == 2  # the other two
    assert await jobs.requeue(pool, None) == 0
    rows = await media_jobs(pool, channel.tenant_id)
    assert {r["status"] for r in rows} == {"pending"}
    # The last reason stays visible until the next attempt says otherwise.
    assert {r["last_error"] for r in rows} == {"channel has no bot_token"}
    windows = await pool.fetch(
        "SELECT queued_at > created_at AS renewed FROM ingest_media_jobs WHERE tenant_id = $1",
        channel.tenant_id,
    )
    assert all(w["renewed"] for w in windows)
    pending, oldest = await jobs.queue_stats(pool)
    assert pending >= 3
    assert oldest >= 0
    await release_all(pool)


async def test_stored_jobs_are_forgotten_after_their_retention_and_nothing_else(
    pipeline: MediaPipeline,
) -> None:
    pool = pipeline.pool
    channel = await signed_channel(pool, "telegram")
    await jobs.prune_stored(pool, retention_hours=1)  # other tests' aged jobs: shared database
    await photos(pipeline, channel, 7, 5000)
    ids = sorted(r["upload_id"] for r in await wait_jobs(pool, channel.tenant_id, 7))
    old_stored, later, fresh_stored, old_failed, old_pending = ids[:3], ids[3], *ids[4:]
    state = "UPDATE ingest_media_jobs SET status = $2, updated_at = now() - $3::text::interval"
    await pool.execute(state + " WHERE upload_id = ANY($1::int[])", old_stored, "stored", "2h")
    await pool.execute(
        state + " WHERE upload_id = ANY($1::int[])", [later, fresh_stored], "stored", "0s"
    )
    await pool.execute(state + " WHERE upload_id = $1", old_failed, "failed", "2h")
    await pool.execute(state + " WHERE upload_id = $1", old_pending, "pending", "2h")

    # In batches (short transactions): three of two, then the rest.
    assert await jobs.prune_stored(pool, retention_hours=1, batch=2) == 3
    # The worker's housekeeping round prunes another, once it is old enough, after the sweep.
    await pool.execute(state + " WHERE upload_id = $1", later, "stored", "2h")
    stop = asyncio.Event()

    class SweptStore:
        async def sweep(self, older_than_s: float) -> int:
            stop.set()  # one round
            return 0

    settings = pipeline.settings.model_copy(update={"media_job_retention_hours": 1})
    await housekeeping(SweptStore(), pool, settings, stop, interval_s=60)  # type: ignore[arg-type]

    left = {r["upload_id"]: r["status"] for r in await media_jobs(pool, channel.tenant_id)}
    assert left == {fresh_stored: "stored", old_failed: "failed", old_pending: "pending"}
    uploads = await pool.fetchval(
        "SELECT count(*) FROM core_uploads WHERE id = ANY($1::int[])", ids
    )
    assert uploads == 7  # the uploads say where the bytes are; only the jobs go
    await release_all(pool)


async def test_transient_failures_give_up_when_the_retry_window_is_over(
    pipeline: MediaPipeline,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    tmp_path: Path,
) -> None:
    pool = pipeline.pool
    telegram_api.add_bot(BOT_TOKEN)
    telegram_api.add_file(PHOTO_ID, payload(1000, "never", JPEG_HEAD))
    down = {"ok": False, "error_code": 502, "description": "Bad Gateway"}
    telegram_api.server.script("getfile", *[Scripted(502, down)] * 50)
    channel = await signed_channel(pool, "telegram", bot_token=BOT_TOKEN)
    await photos(pipeline, channel, 1, 5000)
    await wait_jobs(pool, channel.tenant_id, 1)

    overrides = media_overrides(telegram_api, whatsapp_api, twilio_api, f"file://{tmp_path}")
    settings = pipeline.settings.model_copy(
        update={**overrides, "media_retry_window_s": 1.5, "media_retry_backoff_s": 0.2}
    )
    async with running_media_worker(settings, pool):
        [job] = await settled_jobs(pool, channel.tenant_id, 1, within=20)
    assert job["status"] == "failed"
    assert job["attempts"] >= 2
    assert job["last_error"].startswith(f"gave up after {job['attempts']} attempts in 1.5 s: ")
    assert "telegram getFile" in job["last_error"]
    assert len(telegram_api.server.calls("getfile")) == job["attempts"]
    await release_all(pool)


async def test_shutdown_hands_back_a_download_that_does_not_finish_in_time(
    pipeline: MediaPipeline,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    tmp_path: Path,
) -> None:
    pool = pipeline.pool
    telegram_api.add_bot(BOT_TOKEN)
    slow = payload(2_000_000, "slow", JPEG_HEAD)  # 64 KiB every 0.2 s: about 6 s
    telegram_api.add_file(PHOTO_ID, slow, chunk_delay_s=0.2)
    channel = await signed_channel(pool, "telegram", bot_token=BOT_TOKEN)
    await photos(pipeline, channel, 1, 6000)
    await wait_jobs(pool, channel.tenant_id, 1)

    overrides = media_overrides(telegram_api, whatsapp_api, twilio_api, f"file://{tmp_path}")
    settings = pipeline.settings.model_copy(update={**overrides, "shutdown_timeout_s": 0.5})

    async def leased() -> bool:
        [row] = await media_jobs(pool, channel.tenant_id)
        return row["lease"] is not None

    async with running_media_worker(settings, pool):
        assert await eventually(leased, bool)
        await asyncio.sleep(0.5)  # downloading
    [job] = await media_jobs(pool, channel.tenant_id)
    assert (job["status"], job["lease"], job["attempts"]) == ("pending", None, 1)
    assert job["last_error"] == "interrupted by shutdown"
    due = await pool.fetchval(
        "SELECT next_attempt_at <= now() FROM ingest_media_jobs WHERE upload_id = $1",
        job["upload_id"],
    )
    assert due is True  # claimable at once, not after the lease
    assert files_under(tmp_path) == []  # nothing half-written, no temp file left
    await release_all(pool)
