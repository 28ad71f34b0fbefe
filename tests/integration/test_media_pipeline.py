"""Attachments end to end: webhook -> gateway -> real broker -> consumer (creates the fetch job
with the upload) -> fetch worker (inside the consumer) -> provider fakes over HTTP -> a real
object store -> core_uploads and an attachment chat event."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from ingest.config import Settings
from ingest.embedded import ResolvedServices
from ingest.events import chat_event_adapter
from tests.fakes.harness import FakeServer, Scripted
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake, base64_sha256
from tests.integration.media import (
    ACCESS_TOKEN,
    ACCOUNT_SID,
    BOT_TOKEN,
    JPEG_HEAD,
    PHOTO_ID,
    MediaPipeline,
    attachment_events,
    media_overrides,
    media_pipeline,
    payload,
    settled_jobs,
    stored_bytes,
)
from tests.integration.pipeline import Gateway, TenantChannel
from tests.integration.signing import (
    AUTH_TOKEN,
    post_sms,
    post_telegram,
    post_whatsapp,
    signed_channel,
    sms_fields,
    tg_payload,
    wa_payload,
)
from tests.support import cli_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["file", "s3"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Every test runs on a real directory, then on a bucket of the moto S3 server over HTTP."""
    if request.param == "file":
        yield f"file://{tmp_path_factory.mktemp('media-store')}"
        return
    server = request.getfixturevalue("s3_server")
    with pytest.MonkeyPatch.context() as env:  # module-wide, so not the function-scoped fixture
        for name, value in server.env.items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        yield f"s3://{server.create_bucket()}/media"


@pytest.fixture(scope="module")
async def pipeline(
    services: ResolvedServices,
    store_url: str,
    _telegram_fake: TelegramFake,
    _whatsapp_fake: WhatsAppFake,
    _twilio_fake: TwilioFake,
) -> AsyncIterator[MediaPipeline]:
    overrides = media_overrides(_telegram_fake, _whatsapp_fake, _twilio_fake, store_url)
    async with media_pipeline(services, "media", **overrides) as opened:
        yield opened


@pytest.fixture(scope="module")
def media_settings(pipeline: MediaPipeline) -> Settings:
    return pipeline.settings


@pytest.fixture(scope="module")
def media_pool(pipeline: MediaPipeline) -> asyncpg.Pool:
    return pipeline.pool


@pytest.fixture(scope="module")
def media_gateway(pipeline: MediaPipeline) -> Gateway:
    return pipeline.gateway


def tg_update(name: str, message_id: int, **media: Any) -> dict[str, Any]:
    """A fixture update made unique (message id) with some media fields replaced."""
    update = copy.deepcopy(tg_payload(name))
    update["update_id"] = message_id
    update["message"]["message_id"] = message_id
    for kind, fields in media.items():
        update["message"][kind].update(fields)
    return update


async def test_telegram_photo_document_and_voice_are_stored(
    media_gateway: Gateway,
    media_pool: asyncpg.Pool,
    media_settings: Settings,
    store_url: str,
    telegram_api: TelegramFake,
) -> None:
    telegram_api.add_bot(BOT_TOKEN)
    channel = await signed_channel(media_pool, "telegram", bot_token=BOT_TOKEN)
    photo = payload(132533, "photo", JPEG_HEAD)  # the size the webhook declares
    document = payload(536392, "document", b"%PDF-1.7\n")
    voice = payload(23000, "voice", b"OggS")
    telegram_api.add_file(PHOTO_ID, photo)
    telegram_api.add_file("BQACAgIAAxkBdocument", document, content_type="application/pdf")
    telegram_api.add_file("AwACAgIAAxkBvoice", voice)
    updates = [
        tg_update("photo.json", 501),
        tg_update("document.json", 502, document={"file_id": "BQACAgIAAxkBdocument"}),
        tg_update("voice.json", 503, voice={"file_id": "AwACAgIAAxkBvoice"}),
    ]
    for update in updates:
        assert (await post_telegram(media_gateway, channel, update)).status_code == 200

    jobs = await settled_jobs(media_pool, channel.tenant_id, 3)
    # The three senders differ, so their messages may be written in any order: matched by size.
    served = {
        len(photo): (photo, "image/jpeg"),
        len(document): (document, "application/pdf"),
        len(voice): (voice, "audio/ogg"),
    }
    assert [j["status"] for j in jobs] == ["stored"] * 3, [j["last_error"] for j in jobs]
    assert sorted(j["size"] for j in jobs) == sorted(served)
    for job in jobs:
        data, mimetype = served[job["size"]]
        assert job["mimetype"] == mimetype
        assert job["path"] == f"{store_url}/media/{channel.tenant_id}/{job['upload_id']}"
        assert await stored_bytes(store_url, job["path"]) == data
        assert (job["size"], job["hash"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert (job["attempts"], job["last_error"], job["lease"]) == (1, None, None)
    await assert_attachment_events(media_pool, channel, jobs)


async def assert_attachment_events(
    pool: asyncpg.Pool, channel: TenantChannel, jobs: list[asyncpg.Record]
) -> None:
    """One `message.updated` (change attachment) per job, saying what core_uploads says."""

    async def probe() -> list[dict[str, Any]]:
        return await attachment_events(pool, channel.tenant_id)

    from tests.support import eventually

    events = await eventually(probe, lambda found: len(found) >= len(jobs))
    by_upload = {e["attachment"]["upload_id"]: e for e in events}
    assert len(events) == len(by_upload) == len(jobs)
    for job in jobs:
        event = by_upload[job["upload_id"]]
        chat_event_adapter.validate_python(event)
        assert event["message_id"] == job["message_id"]
        outcome = event["attachment"]
        assert outcome["status"] == job["status"]
        if job["status"] == "stored":
            expected = (job["path"], job["size"], job["hash"], job["mimetype"], None)
        else:
            expected = (None, None, None, outcome["mimetype"], job["last_error"])
        actual = (outcome["path"], outcome["size"], outcome["hash"], outcome["mimetype"])
        assert (*actual, outcome["error"]) == expected


def wa_media_message(kind: str, media_id: str, wamid: str, **fields: Any) -> dict[str, Any]:
    source = "image_url.json" if kind == "image" else "document_forwarded.json"
    body = copy.deepcopy(wa_payload(source))
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message["id"] = wamid
    message[kind] = {**message[kind], "id": media_id, **fields}
    return body


async def test_whatsapp_image_and_document_are_stored_and_checked(
    media_gateway: Gateway,
    media_pool: asyncpg.Pool,
    store_url: str,
    whatsapp_api: WhatsAppFake,
) -> None:
    whatsapp_api.add_token(ACCESS_TOKEN)
    channel = await signed_channel(media_pool, "whatsapp", access_token=ACCESS_TOKEN)
    image = payload(300_000, "wa-image", JPEG_HEAD)
    document = payload(1_200_000, "wa-document", b"%PDF-1.4\n")
    whatsapp_api.add_media("1111111111", image, mime_type="image/jpeg")
    whatsapp_api.add_media("2222222222", document, mime_type="application/pdf", via_cdn=True)
    bodies = [
        wa_media_message("image", "1111111111", "wamid.media-image"),
        # The webhook's sha256 in base64, as Meta's fixtures have it; checked too.
        wa_media_message(
            "document", "2222222222", "wamid.media-doc", sha256=base64_sha256(document)
        ),
    ]
    for body in bodies:
        assert (await post_whatsapp(media_gateway, channel, body)).status_code == 200

    jobs = await settled_jobs(media_pool, channel.tenant_id, 2)
    # One batch may hold both messages, written in provider-id order: matched by size.
    served = {len(image): (image, "image/jpeg"), len(document): (document, "application/pdf")}
    assert [j["status"] for j in jobs] == ["stored", "stored"], [j["last_error"] for j in jobs]
    assert sorted(j["size"] for j in jobs) == sorted(served)
    for job in jobs:
        data, mimetype = served[job["size"]]
        assert job["mimetype"] == mimetype
        assert await stored_bytes(store_url, job["path"]) == data
        assert job["hash"] == hashlib.sha256(data).hexdigest()
    assert whatsapp_api.credential_leaks == 0
    await assert_attachment_events(media_pool, channel, jobs)


async def test_twilio_mms_with_two_media_follows_the_redirect_without_credentials(
    media_gateway: Gateway, media_pool: asyncpg.Pool, store_url: str, twilio_api: TwilioFake
) -> None:
    twilio_api.add_account(ACCOUNT_SID, AUTH_TOKEN)
    twilio_api.propagation_s = 1.0  # the first request(s) get Twilio's early 404
    channel = await signed_channel(media_pool, "sms", account_sid=ACCOUNT_SID)
    first = payload(40_000, "mms-1", JPEG_HEAD)
    second = payload(25_000, "mms-2", b"\x89PNG\r\n\x1a\n")
    sid = "MM" + "1" * 32
    urls = [
        twilio_api.add_media(ACCOUNT_SID, sid, "ME" + "a" * 32, first, content_type="image/jpeg"),
        twilio_api.add_media(ACCOUNT_SID, sid, "ME" + "b" * 32, second, content_type="image/png"),
    ]
    fields = sms_fields(
        "mms_single_image",
        MessageSid=sid,
        SmsMessageSid=sid,
        SmsSid=sid,
        AccountSid=ACCOUNT_SID,
        NumMedia="2",
        MediaUrl0=urls[0],
        MediaUrl1=urls[1],
        MediaContentType1="image/png",
    )
    assert (await post_sms(media_gateway, channel, fields)).status_code == 200

    jobs = await settled_jobs(media_pool, channel.tenant_id, 2)
    assert [j["status"] for j in jobs] == ["stored", "stored"], [j["last_error"] for j in jobs]
    # One message's attachments are uploads in their webhook order.
    for job, data in zip(jobs, (first, second), strict=True):
        assert await stored_bytes(store_url, job["path"]) == data
        assert (job["size"], job["hash"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert [j["mimetype"] for j in jobs] == ["image/jpeg", "image/png"]
    assert max(j["attempts"] for j in jobs) >= 2  # the early 404 was retried
    assert twilio_api.credential_leaks == 0
    assert len(twilio_api.cdn.calls("cdn")) == 2
    await assert_attachment_events(media_pool, channel, jobs)


async def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    from tests.support import CLI

    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_missing_bot_token_fails_naming_it_and_stores_after_channel_set_and_retry(
    media_gateway: Gateway,
    media_pool: asyncpg.Pool,
    media_settings: Settings,
    store_url: str,
    telegram_api: TelegramFake,
) -> None:
    channel = await signed_channel(media_pool, "telegram")  # no bot_token
    photo = payload(132533, "photo-later", JPEG_HEAD)
    telegram_api.add_bot(BOT_TOKEN)
    telegram_api.add_file(PHOTO_ID, photo)
    assert (await post_telegram(media_gateway, channel, tg_update("photo.json", 601))).is_success

    [job] = await settled_jobs(media_pool, channel.tenant_id, 1)
    assert job["status"] == "failed"
    assert "bot_token" in job["last_error"]
    assert f"crm-ingest channel set {channel.channel_id} --config bot_token=" in job["last_error"]
    assert job["path"] == f"telegram:{PHOTO_ID}"  # the provider reference, untouched
    message = await media_pool.fetchval(
        "SELECT message FROM crm_chat_messages WHERE id = $1", job["message_id"]
    )
    assert message == "[photo]"  # the message was never held back by its attachment
    assert telegram_api.server.requests == []  # nothing sent without a token

    code, out, err = await run_cli(media_settings, "media", "list", "--status", "failed")
    assert code == 0, err
    listed = [line for line in out.splitlines() if f'"upload_id": {job["upload_id"]},' in line]
    assert len(listed) == 1
    assert "bot_token" in listed[0]
    assert '"status": "failed"' in listed[0]

    # What `media list` said to run: the operator's own verb, which seals the token at rest.
    code, out, err = await run_cli(
        media_settings,
        "channel",
        "set",
        str(channel.channel_id),
        "--config",
        f"bot_token={BOT_TOKEN}",
    )
    assert code == 0, err
    assert BOT_TOKEN not in out  # printed masked
    code, out, err = await run_cli(media_settings, "media", "retry", "--id", str(job["upload_id"]))
    assert (code, out.strip()) == (0, '{"requeued": 1}'), err

    [job] = await settled_jobs(media_pool, channel.tenant_id, 1)
    assert job["status"] == "stored", job["last_error"]
    assert await stored_bytes(store_url, job["path"]) == photo
    # Queued with the outcomes they report: the failure, then the success, two distinct ids.
    events = await attachment_events(media_pool, channel.tenant_id)
    assert [e["attachment"]["status"] for e in events] == ["failed", "stored"]
    assert len({e["event_id"] for e in events}) == 2


async def test_refusals_end_as_failed_jobs_with_short_reasons(
    media_gateway: Gateway,
    media_pool: asyncpg.Pool,
    telegram_api: TelegramFake,
    whatsapp_api: WhatsAppFake,
    twilio_api: TwilioFake,
    internal_server: FakeServer,
) -> None:
    telegram_api.add_bot(BOT_TOKEN)
    whatsapp_api.add_token(ACCESS_TOKEN)
    twilio_api.add_account(ACCOUNT_SID, AUTH_TOKEN)
    tg = await signed_channel(media_pool, "telegram", bot_token=BOT_TOKEN)
    wa = await signed_channel(media_pool, "whatsapp", access_token=ACCESS_TOKEN)
    sms = await signed_channel(media_pool, "sms", account_sid=ACCOUNT_SID)
    # Over Telegram's 20 MB bot limit: getFile says so.
    telegram_api.add_file("BQACAgIAAxkBhuge", b"x" * 10, file_size=25 << 20)
    update = tg_update("document.json", 701, document={"file_id": "BQACAgIAAxkBhuge"})
    assert (await post_telegram(media_gateway, tg, update)).is_success
    # Meta's sha256 does not match the bytes.
    whatsapp_api.add_media("3333333333", payload(5000, "wa-bad"), sha256="0" * 64)
    body = wa_media_message("image", "3333333333", "wamid.media-bad")
    assert (await post_whatsapp(media_gateway, wa, body)).is_success
    # A webhook media id older than Meta's 7 days.
    old = await signed_channel(media_pool, "whatsapp", access_token=ACCESS_TOKEN)
    whatsapp_api.add_media("4444444444", payload(5000, "wa-old"), age_s=8 * 86400)
    body = wa_media_message("image", "4444444444", "wamid.media-old")
    assert (await post_whatsapp(media_gateway, old, body)).is_success
    # A forged MediaUrl pointing inside the network.
    forged = f"{internal_server.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MMx/Media/MEx"
    fields = sms_fields("mms_single_image", AccountSid=ACCOUNT_SID, MediaUrl0=forged)
    assert (await post_sms(media_gateway, sms, fields)).is_success

    reasons = {}
    for name, channel in (("too big", tg), ("checksum", wa), ("expired", old), ("host", sms)):
        [job] = await settled_jobs(media_pool, channel.tenant_id, 1)
        assert job["status"] == "failed"
        assert job["attempts"] == 1  # final at once: retrying cannot help
        assert len(job["last_error"]) <= 500
        assert BOT_TOKEN not in job["last_error"]
        assert ACCESS_TOKEN not in job["last_error"]
        reasons[name] = job["last_error"]
        await assert_attachment_events(media_pool, channel, [job])
    assert "too big" in reasons["too big"] or "too large" in reasons["too big"]
    assert "checksum" in reasons["checksum"]
    assert "expired" in reasons["expired"]
    assert "host not allowed" in reasons["host"]
    assert internal_server.requests == []


async def test_rate_limit_is_retried_after_the_providers_wait(
    media_gateway: Gateway, media_pool: asyncpg.Pool, store_url: str, telegram_api: TelegramFake
) -> None:
    telegram_api.add_bot(BOT_TOKEN)
    data = payload(10_000, "limited", JPEG_HEAD)
    telegram_api.add_file(PHOTO_ID, data)
    limited = {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    telegram_api.server.script("getfile", Scripted(429, limited, headers={"retry-after": "1"}))
    telegram_api.server.script("file", Scripted(502, body=b"bad gateway"))
    channel = await signed_channel(media_pool, "telegram", bot_token=BOT_TOKEN)
    assert (await post_telegram(media_gateway, channel, tg_update("photo.json", 801))).is_success

    [job] = await settled_jobs(media_pool, channel.tenant_id, 1)
    assert job["status"] == "stored", job["last_error"]
    assert job["attempts"] == 3  # 429, then 502, then the bytes
    assert await stored_bytes(store_url, job["path"]) == data
    calls = [r.path.split("/")[-1] for r in telegram_api.server.requests]
    assert calls.count("getFile") == 3
    assert uuid.UUID(str(job["channel_id"])) == channel.channel_id
