"""Chaos for the media fetcher, on real processes and services:

(a) `crm-ingest media work` is SIGKILLed mid-download (slow provider bodies) and restarted:
    every job ends stored or failed, no object under its final key is partial, no row is
    written twice, and each upload gets one outcome event;
(b) the S3 store (moto's server) is down for 10 s: jobs wait, then complete;
(c) PostgreSQL is down for 10 s while `crm-ingest media work` downloads: the same process
    carries on, outcomes it could not record are redone, every job ends stored once;
(d) a 100 MB file goes through `crm-ingest media work` with its peak RSS growth measured.

Jobs are created by an in-process consumer without a store (so it runs no worker); the worker
under test is the only one fetching. Figures are printed as `[media-…]` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import operator
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from ingest.embedded import EmbeddedPostgres, ResolvedServices, free_port
from ingest.objectstore import open_store
from sql.db import create_pool
from tests.fakes.fixtures import as_env
from tests.fakes.s3 import S3Server
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake
from tests.integration.media import (
    ACCESS_TOKEN,
    BOT_TOKEN,
    JPEG_HEAD,
    MediaPipeline,
    attachment_events,
    media_jobs,
    media_overrides,
    media_pipeline,
    payload,
    settled_jobs,
    stored_bytes,
    wait_jobs,
)
from tests.integration.signing import post_telegram, post_whatsapp, signed_channel, tg_payload
from tests.integration.test_media_pipeline import wa_media_message
from tests.support import Processes, Service, cli_env, eventually

pytestmark = pytest.mark.chaos

SEED = 20_261_205


def worker_env(pipeline: MediaPipeline, overrides: dict[str, Any]) -> dict[str, str]:
    """The environment of a `crm-ingest media work` for `pipeline`, with `overrides` (setting
    field names) as CRM_INGEST_* variables."""
    return cli_env(pipeline.settings, **as_env({k: str(v) for k, v in overrides.items()}))


async def started(service: Service, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while "media worker running" not in service.tail(100_000):
        assert service.proc.poll() is None, service.tail()
        assert time.monotonic() < deadline, service.tail()
        await asyncio.sleep(0.1)


@pytest.fixture
async def jobs_pipeline(services: ResolvedServices) -> AsyncIterator[MediaPipeline]:
    async with media_pipeline(services, "mediachaos") as opened:  # no store: no worker here
        yield opened


def store_leftovers(root: Path) -> list[Path]:
    """Hidden temp files of puts that never finished (never objects: keys cannot start with .)."""
    return [p for p in root.rglob(".*") if p.is_file()]


async def test_worker_killed_mid_download_and_restarted(
    jobs_pipeline: MediaPipeline,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    processes: Processes,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    pool = jobs_pipeline.pool
    root = tmp_path / "store"
    store_url = f"file://{root}"
    overrides = {
        **media_overrides(telegram_api, whatsapp_api, twilio_api, store_url),
        "media_lease_s": 3.0,
        "media_concurrency": 8,
        "media_per_channel": 4,
    }
    telegram_api.add_bot(BOT_TOKEN)
    channels = [await signed_channel(pool, "telegram", bot_token=BOT_TOKEN) for _ in range(2)]
    served: dict[str, bytes] = {}
    sent = 0
    for c, channel in enumerate(channels):
        for n in range(5):
            file_id = f"BQACAgIAAxkBchaos{c}x{n}"
            # ~1.5 MB at 64 KiB every 60 ms: about 1.5 s per file, long enough to be killed in.
            data = payload(1_500_000 + n, file_id, b"%PDF-1.7\n")
            telegram_api.add_file(file_id, data, content_type="application/pdf", chunk_delay_s=0.06)
            served[file_id] = data
            update = tg_payload("document.json")
            update["update_id"] = update["message"]["message_id"] = 9000 + 10 * c + n
            update["message"]["document"].update(file_id=file_id, file_size=len(data))
            assert (await post_telegram(jobs_pipeline.gateway, channel, update)).is_success
            sent += 1
    for channel in channels:
        await wait_jobs(pool, channel.tenant_id, 5)

    log = tmp_path / "worker.log"
    kills = 0
    started_at = time.monotonic()
    for _ in range(2):
        worker = processes.start(worker_env(jobs_pipeline, overrides), log, "media", "work")
        await started(worker)

        # Kill it while downloads run: some file links served, not every job settled.
        async def downloads() -> int:
            return len(telegram_api.server.calls("file"))

        await eventually(downloads, functools.partial(operator.le, 2 * (kills + 1)), within=20)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        worker.proc.send_signal(signal.SIGKILL)
        await worker.wait_exit(10)
        kills += 1
    partial_after_kill = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            partial_after_kill += path.read_bytes() not in served.values()
    leftovers = len(store_leftovers(root))

    worker = processes.start(worker_env(jobs_pipeline, overrides), log, "media", "work")
    await started(worker)
    settled = [await settled_jobs(pool, ch.tenant_id, 5, within=90) for ch in channels]
    seconds = time.monotonic() - started_at
    jobs = [job for per_channel in settled for job in per_channel]
    statuses = [job["status"] for job in jobs]
    stored = statuses.count("stored")
    mismatched = 0
    for job in jobs:
        if job["status"] == "stored":
            data = await stored_bytes(store_url, job["path"])
            mismatched += hashlib.sha256(data).hexdigest() != job["hash"]
            mismatched += data not in served.values()
    uploads = await pool.fetchval(
        "SELECT count(*) FROM core_uploads WHERE tenant_id = ANY($1::uuid[])",
        [ch.tenant_id for ch in channels],
    )
    messages = await pool.fetchval(
        """SELECT count(*) FROM crm_chat_messages m JOIN crm_chats c ON c.id = m.chat_id
           WHERE c.tenant_id = ANY($1::uuid[])""",
        [ch.tenant_id for ch in channels],
    )
    outcome_events = [e for ch in channels for e in await attachment_events(pool, ch.tenant_id)]
    per_upload = {e["attachment"]["upload_id"] for e in outcome_events}
    print(
        f"\n[media-chaos-kill] jobs={len(jobs)} stored={stored} failed={len(jobs) - stored} "
        f"kills={kills} partial_objects={partial_after_kill} temp_leftovers={leftovers} "
        f"mismatched={mismatched} uploads={uploads} messages={messages} "
        f"outcome_events={len(outcome_events)} attempts_max={max(j['attempts'] for j in jobs)} "
        f"seconds={seconds:.1f}"
    )
    assert worker.proc.poll() is None, worker.tail()
    assert set(statuses) <= {"stored", "failed"}
    assert stored == len(jobs) == sent, [j["last_error"] for j in jobs]
    assert (partial_after_kill, mismatched) == (0, 0)
    assert (uploads, messages) == (sent, sent)  # no row written twice
    assert len(outcome_events) == len(per_upload) == sent  # one outcome event per upload
    assert max(j["attempts"] for j in jobs) >= 2  # killed downloads were redone


async def test_postgres_down_while_media_work_downloads(
    services: ResolvedServices,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    processes: Processes,
    tmp_path: Path,
) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    overrides = {
        **media_overrides(telegram_api, whatsapp_api, twilio_api, store_url),
        "media_lease_s": 3.0,
    }
    telegram_api.add_bot(BOT_TOKEN)
    with EmbeddedPostgres(fast=True) as pg:
        async with media_pipeline(services, "mediapg", pg.url) as pipeline:  # no worker here
            channel = await signed_channel(pipeline.pool, "telegram", bot_token=BOT_TOKEN)
            served = []
            for n in range(6):
                file_id = f"BQACAgIAAxkBpgdown{n}"
                served.append(payload(1_000_000 + n, file_id, b"%PDF-1.7\n"))
                # 64 KiB every 0.15 s: about 2.4 s per file, so the outage catches them mid-way.
                telegram_api.add_file(file_id, served[-1], chunk_delay_s=0.15)
                update = tg_payload("document.json")
                update["update_id"] = update["message"]["message_id"] = 8000 + n
                update["message"]["document"].update(file_id=file_id, file_size=len(served[-1]))
                assert (await post_telegram(pipeline.gateway, channel, update)).is_success
            await wait_jobs(pipeline.pool, channel.tenant_id, 6)
            env = worker_env(pipeline, overrides)
            url = pipeline.settings.database_url

        worker = processes.start(env, tmp_path / "worker.log", "media", "work")
        await started(worker)

        async def downloads() -> int:
            return len(telegram_api.server.calls("file"))

        await eventually(downloads, functools.partial(operator.le, 2), within=20)
        pg.stop()  # fast shutdown: the worker's connections drop mid-download
        stopped_at = time.monotonic()
        await asyncio.sleep(10)
        assert worker.proc.poll() is None, worker.tail()
        pg.start()
        outage = time.monotonic() - stopped_at
        restarted_at = time.monotonic()
        pool = await create_pool(url, max_size=2)
        try:
            jobs = await settled_jobs(pool, channel.tenant_id, 6, within=120)
            recovered_s = time.monotonic() - restarted_at
            contents = [await stored_bytes(store_url, j["path"]) for j in jobs]
            uploads = await pool.fetchval(
                "SELECT count(*) FROM core_uploads WHERE tenant_id = $1", channel.tenant_id
            )
            events = await attachment_events(pool, channel.tenant_id)
        finally:
            await pool.close()
        assert worker.proc.poll() is None, worker.tail()  # the same process throughout
        exit_code = await worker.stop(60)
    log = worker.tail(10**8)
    print(
        f"\n[media-pg-outage] jobs={len(jobs)} stored={sum(j['status'] == 'stored' for j in jobs)} "
        f"outage_s={outage:.1f} settled_after_s={recovered_s:.1f} "
        f"attempts_max={max(j['attempts'] for j in jobs)} uploads={uploads} "
        f"outcome_events={len(events)} not_recorded={log.count('outcome not recorded')} "
        f"claim_retries={log.count('media claim failed')}"
    )
    assert [j["status"] for j in jobs] == ["stored"] * 6, [j["last_error"] for j in jobs]
    assert sorted(contents) == sorted(served)
    assert uploads == 6
    assert len(events) == len({e["attachment"]["upload_id"] for e in events}) == 6
    assert "media claim failed" in log  # it noticed the outage, and lived through it
    assert exit_code == 0, worker.tail()


@contextlib.contextmanager
def moto_on(port: int) -> Iterator[ThreadedMotoServer]:
    """moto's S3 server on a fixed port, so it can come back at the same address (its buckets
    live in the process, so they survive a restart)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_store_down_for_ten_seconds_then_jobs_complete(
    services: ResolvedServices,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
) -> None:
    port = free_port()
    s3 = S3Server(f"http://127.0.0.1:{port}")
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3.env.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        with moto_on(port):
            store_url = f"s3://{s3.create_bucket()}/media"
        # The store is down from here on, before any webhook arrives.
        down_at = time.monotonic()
        overrides = media_overrides(telegram_api, whatsapp_api, twilio_api, store_url)
        async with media_pipeline(services, "mediastore", **overrides) as pipeline:
            pool = pipeline.pool
            telegram_api.add_bot(BOT_TOKEN)
            channel = await signed_channel(pool, "telegram", bot_token=BOT_TOKEN)
            served = []
            for n in range(4):
                file_id = f"AgACAgIAAxkBoutage{n}"
                served.append(payload(200_000 + n, file_id, JPEG_HEAD))
                telegram_api.add_file(file_id, served[-1])
                update = tg_payload("photo.json")
                update["update_id"] = update["message"]["message_id"] = 7000 + n
                update["message"]["photo"][-1]["file_id"] = file_id
                assert (await post_telegram(pipeline.gateway, channel, update)).is_success
            # Under load the consumer may take a while to write the messages: wait until all four
            # jobs exist and have been retried, then keep the store down for 10 s at least.
            await eventually(
                lambda: media_jobs(pool, channel.tenant_id),
                lambda found: len(found) == 4 and all(j["attempts"] >= 2 for j in found),
                within=90,
            )
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
            waiting = await media_jobs(pool, channel.tenant_id)
            with moto_on(port):  # back, at the same address, with its bucket
                back_at = time.monotonic()
                jobs = await settled_jobs(pool, channel.tenant_id, 4, within=60)
                completed_s = time.monotonic() - back_at
                contents = [await stored_bytes(store_url, j["path"]) for j in jobs]
    reasons = {j["last_error"] for j in waiting}
    print(
        f"\n[media-store-outage] jobs={len(jobs)} down_s={back_at - down_at:.1f} "
        f"pending_while_down={sum(j['status'] == 'pending' for j in waiting)} "
        f"attempts_while_down={sum(j['attempts'] for j in waiting)} "
        f"stored={sum(j['status'] == 'stored' for j in jobs)} completed_after_s={completed_s:.1f}"
    )
    assert [j["status"] for j in waiting] == ["pending"] * 4
    assert all(j["attempts"] >= 2 for j in waiting)  # retried while down, never failed
    assert all(r is not None and "object store unavailable" in r for r in reasons), reasons
    assert [j["status"] for j in jobs] == ["stored"] * 4, [j["last_error"] for j in jobs]
    assert sorted(contents) == sorted(served)


async def test_100_mb_download_streams_through_the_worker(
    jobs_pipeline: MediaPipeline,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    processes: Processes,
    tmp_path: Path,
) -> None:
    size = 100_000_000
    store_url = f"file://{tmp_path / 'store'}"
    overrides = media_overrides(telegram_api, whatsapp_api, twilio_api, store_url)
    whatsapp_api.add_token(ACCESS_TOKEN)
    data = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    whatsapp_api.add_media("9999999999", data, mime_type="video/mp4")
    channel = await signed_channel(jobs_pipeline.pool, "whatsapp", access_token=ACCESS_TOKEN)

    worker = processes.start(
        worker_env(jobs_pipeline, overrides), tmp_path / "worker.log", "media", "work"
    )
    await started(worker)
    await asyncio.sleep(1.0)  # settled after start-up
    # Reset the peak to the current RSS (Linux clear_refs "5"), so start-up's peak is not it.
    _reset_peak_rss(worker.proc.pid)
    baseline = _rss_kib(worker.proc.pid, "VmRSS")
    assert _rss_kib(worker.proc.pid, "VmHWM") <= baseline + 1024  # the reset took effect
    began = time.monotonic()
    body = wa_media_message("document", "9999999999", "wamid.big", mime_type="video/mp4")
    assert (await post_whatsapp(jobs_pipeline.gateway, channel, body)).is_success
    [job] = await settled_jobs(jobs_pipeline.pool, channel.tenant_id, 1, within=240)
    seconds = time.monotonic() - began
    peak = _rss_kib(worker.proc.pid, "VmHWM")
    growth_mb = (peak - baseline) / 1024
    print(
        f"\n[media-rss] bytes={size} baseline_mb={baseline / 1024:.1f} peak_mb={peak / 1024:.1f} "
        f"growth_mb={growth_mb:.1f} seconds={seconds:.1f} "
        f"mb_per_s={size / 1e6 / max(seconds, 1e-9):.1f}"
    )
    assert job["status"] == "stored", job["last_error"]
    assert (job["size"], job["hash"]) == (size, hashlib.sha256(data).hexdigest())
    store = open_store(store_url)
    try:
        assert job["path"] == store.url(f"media/{channel.tenant_id}/{job['upload_id']}")
    finally:
        await store.close()
    assert growth_mb < 32


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")
