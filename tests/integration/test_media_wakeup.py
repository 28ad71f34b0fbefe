"""A batch that creates fetch jobs wakes the media worker in the same process: the job is
claimed at once, not at the worker's next poll. The poll interval here is a minute, so only the
wake-up can store the photo within the test's bound."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.embedded import ResolvedServices
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake
from tests.integration.media import (
    BOT_TOKEN,
    JPEG_HEAD,
    PHOTO_ID,
    MediaPipeline,
    media_overrides,
    media_pipeline,
    payload,
    settled_jobs,
)
from tests.integration.signing import post_telegram, signed_channel, tg_payload

pytestmark = pytest.mark.integration
POLL_S = 60.0


@pytest.fixture(scope="module")
async def slow_polling(
    services: ResolvedServices,
    tmp_path_factory: pytest.TempPathFactory,
    _telegram_fake: TelegramFake,
    _whatsapp_fake: WhatsAppFake,
    _twilio_fake: TwilioFake,
) -> AsyncIterator[MediaPipeline]:
    store = Path(tmp_path_factory.mktemp("media-wakeup")).as_uri()
    overrides = media_overrides(_telegram_fake, _whatsapp_fake, _twilio_fake, store)
    overrides["media_poll_interval_s"] = POLL_S
    async with media_pipeline(services, "mediawake", **overrides) as opened:
        yield opened


async def test_a_batch_with_fetch_jobs_wakes_the_worker(
    slow_polling: MediaPipeline, telegram_api: TelegramFake
) -> None:
    pool = slow_polling.pool
    telegram_api.add_bot(BOT_TOKEN)
    telegram_api.add_file(PHOTO_ID, payload(132533, "wakeup", JPEG_HEAD))
    channel = await signed_channel(pool, "telegram", bot_token=BOT_TOKEN)
    started = time.monotonic()
    response = await post_telegram(slow_polling.gateway, channel, tg_payload("photo.json"))
    assert response.status_code == 200

    (job,) = await settled_jobs(pool, channel.tenant_id, 1, within=POLL_S / 4)
    seconds = time.monotonic() - started
    print(f"\n[media-wakeup] poll_s={POLL_S} webhook_to_stored_s={seconds:.2f}")
    assert job["status"] == "stored", job["last_error"]
    assert job["attempts"] == 1
