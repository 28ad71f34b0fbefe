"""WhatsApp media source against the Graph API, media host and CDN fakes over real HTTP
(tests/fakes/whatsapp.py): three origins, so credentials crossing origins are visible."""

from __future__ import annotations

import logging

import pytest
import structlog

from ingest.transports.fetching import FetchPermanent, FetchTransient, MediaRef
from tests.fakes.fixtures import media_sources, read_all
from tests.fakes.harness import Scripted
from tests.fakes.whatsapp import WhatsAppFake, base64_sha256, hex_sha256

TOKEN = "EAAGm0PX4ZCpsBAFakeAccessToken1234567890"
DATA = bytes(range(256)) * 300
CONFIG = {"access_token": TOKEN}


def ref(media_id: str = "1037543291543636", sha256: str | None = None) -> MediaRef:
    return MediaRef("whatsapp", f"whatsapp:{media_id}", None, "image/jpeg", sha256)


@pytest.fixture
def meta(whatsapp_api: WhatsAppFake) -> WhatsAppFake:
    whatsapp_api.add_token(TOKEN)
    whatsapp_api.add_media("1037543291543636", DATA, mime_type="image/png", phone_number_id="PN1")
    return whatsapp_api


async def test_lookup_then_download_with_bearer_checked_against_metas_sha256(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        download, body = await read_all(
            sources["whatsapp"], ref(), CONFIG | {"phone_number_id": "PN1"}
        )
    assert body == DATA
    assert download.content_type == "image/png"  # Meta's, over the webhook's
    assert download.declared_size == len(DATA)  # from the string file_size
    assert download.expected_sha256 == hex_sha256(DATA)
    (lookup,) = meta.graph.calls("media_info")
    (fetch,) = meta.media_host.calls("media_download")
    assert lookup.query == {"phone_number_id": "PN1"}
    assert lookup.headers["authorization"] == fetch.headers["authorization"] == f"Bearer {TOKEN}"
    assert fetch.headers["user-agent"]


async def test_missing_access_token_names_the_key(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="no access_token: run crm-ingest channel set"):
            await read_all(sources["whatsapp"], ref(), {"app_secret": "s"})
    assert meta.graph.requests == []


async def test_a_rejected_token_is_permanent_code_190(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    wrong = {"access_token": "EAAGwrongwrongwrong"}
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent) as failure:
            await read_all(sources["whatsapp"], ref(), wrong)
    assert failure.value.reason == "whatsapp rejected the channel's access_token (code 190)"


@pytest.mark.parametrize(
    ("age_s", "config"),
    [(8 * 24 * 3600, CONFIG), (0, CONFIG | {"phone_number_id": "OTHER"})],
    ids=["older-than-7-days", "another-number"],
)
async def test_an_expired_or_foreign_media_id_is_permanent(
    meta: WhatsAppFake, provider_settings: dict[str, str], age_s: float, config: dict[str, str]
) -> None:
    meta.add_media("old", DATA, age_s=age_s, phone_number_id="PN1")
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match=r"expired or unknown \(code 100\)"):
            await read_all(sources["whatsapp"], ref("old"), config)
    assert meta.media_host.requests == []


async def test_an_expired_media_url_gets_one_fresh_lookup(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.media_host.script("media_download", Scripted(404))
    async with media_sources(provider_settings) as sources:
        _, body = await read_all(sources["whatsapp"], ref(), CONFIG)
    assert body == DATA
    assert len(meta.graph.calls("media_info")) == 2


async def test_urls_that_keep_expiring_are_transient(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.url_ttl_s = -1
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match="URL expired"):
            await read_all(sources["whatsapp"], ref(), CONFIG)
    assert len(meta.media_host.calls("media_download")) == 2


async def test_throughput_limit_is_transient_with_retry_after_then_success(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    limited = {"error": {"message": "(#130429) Rate limit hit", "code": 130429}}
    meta.graph.script("media_info", Scripted(400, json=limited, headers={"retry-after": "4"}))
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient) as failure:
            await read_all(sources["whatsapp"], ref(), CONFIG)
        _, body = await read_all(sources["whatsapp"], ref(), CONFIG)
    assert failure.value.retry_after == 4
    assert body == DATA


async def test_a_5xx_from_the_media_host_is_transient_then_success(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.media_host.script("media_download", Scripted(500))
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match=r"\(500\)"):
            await read_all(sources["whatsapp"], ref(), CONFIG)
        _, body = await read_all(sources["whatsapp"], ref(), CONFIG)
    assert body == DATA


async def test_a_redirect_to_another_origin_goes_without_the_bearer_token(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.add_media("cdn", DATA, via_cdn=True)
    async with media_sources(provider_settings) as sources:
        _, body = await read_all(sources["whatsapp"], ref("cdn"), CONFIG)
    assert body == DATA
    (hop,) = meta.cdn.calls("cdn")
    assert "authorization" not in hop.headers
    assert meta.credential_leaks == 0


@pytest.mark.parametrize(
    ("lookup_sha", "webhook_sha"),
    [
        (hex_sha256(b"other bytes"), None),
        ("", base64_sha256(b"other bytes")),
        ("", base64_sha256(b"other bytes").rstrip("=")),
    ],
    ids=["hex-from-lookup", "base64-from-webhook", "unpadded-base64"],
)
async def test_a_checksum_mismatch_fails_after_the_last_byte(
    meta: WhatsAppFake,
    provider_settings: dict[str, str],
    lookup_sha: str,
    webhook_sha: str | None,
) -> None:
    meta.add_media("bad", DATA, sha256=lookup_sha)
    received: list[bytes] = []
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="checksum mismatch"):
            await read_all(sources["whatsapp"], ref("bad", webhook_sha), CONFIG, into=received)
    assert b"".join(received) == DATA


async def test_a_matching_base64_checksum_from_the_webhook_passes(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.add_media("b64", DATA, sha256="")
    async with media_sources(provider_settings) as sources:
        download, body = await read_all(
            sources["whatsapp"], ref("b64", base64_sha256(DATA)), CONFIG
        )
    assert body == DATA
    assert download.expected_sha256 == hex_sha256(DATA)


async def test_a_declared_size_over_the_cap_is_refused_before_downloading(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings, media_max_bytes=1024) as sources:
        with pytest.raises(FetchPermanent, match=f"too large \\({len(DATA)} bytes"):
            await read_all(sources["whatsapp"], ref(), CONFIG)
    assert meta.media_host.requests == []


async def test_an_oversized_content_length_is_refused_before_streaming(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.add_media("cl", DATA, file_size="", claimed_length=50_000_000)
    received: list[bytes] = []
    async with media_sources(provider_settings, media_max_bytes=1_000_000) as sources:
        with pytest.raises(FetchPermanent, match="too large \\(50000000 bytes"):
            await read_all(sources["whatsapp"], ref("cl"), CONFIG, into=received)
    assert received == []


async def test_more_bytes_than_metas_file_size_is_a_mismatch(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.add_media("long", DATA, file_size="1000", content_length=False, chunk_size=4096)
    received: list[bytes] = []
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="size mismatch"):
            await read_all(sources["whatsapp"], ref("long"), CONFIG, into=received)
    assert received == []


async def test_a_media_url_on_a_host_not_allowed_is_refused(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    allowed = f"{meta.graph.host_port},{meta.cdn.host_port}"  # not the media host
    async with media_sources(provider_settings | {"media_allowed_hosts": allowed}) as sources:
        with pytest.raises(FetchPermanent, match="host not allowed"):
            await read_all(sources["whatsapp"], ref(), CONFIG)
    assert meta.media_host.requests == []


async def test_a_slow_lookup_times_out_as_transient(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    meta.graph.script("media_info", Scripted(200, json={}, delay_s=1.5))
    async with media_sources(provider_settings, media_http_timeout_s=0.3) as sources:
        with pytest.raises(FetchTransient, match="timed out"):
            await read_all(sources["whatsapp"], ref(), CONFIG)


async def test_a_path_in_the_media_id_is_refused(
    meta: WhatsAppFake, provider_settings: dict[str, str]
) -> None:
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="not a media id"):
            await read_all(sources["whatsapp"], ref("../PN1/messages"), CONFIG)
    assert meta.graph.requests == []


async def test_the_token_never_reaches_a_reason_or_a_log_line(
    meta: WhatsAppFake, provider_settings: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    meta.add_media("bad", DATA, sha256=hex_sha256(b"x"))
    reasons = []
    allowed = {"media_allowed_hosts": meta.graph.host_port}
    with structlog.testing.capture_logs() as lines:
        for settings, media_id in (
            (provider_settings, "bad"),
            (provider_settings | allowed, "1037543291543636"),
        ):
            async with media_sources(settings) as sources:
                with pytest.raises(FetchPermanent) as failure:
                    await read_all(sources["whatsapp"], ref(media_id), CONFIG)
                reasons.append(repr(failure.value))
    assert lines
    assert TOKEN not in repr(lines) + caplog.text + "".join(reasons)
