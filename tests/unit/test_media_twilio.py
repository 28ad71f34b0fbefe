"""Twilio media source against the API and CDN fakes over real HTTP (tests/fakes/twilio.py):
the CDN is another origin that refuses any request carrying Authorization."""

from __future__ import annotations

import base64
import logging

import pytest
import structlog

from ingest.transports.fetching import FetchPermanent, FetchTransient, MediaRef
from tests.fakes.fixtures import media_sources, read_all
from tests.fakes.harness import FakeServer, Scripted
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake

ACCOUNT = "AC" + "a1" * 16
OTHER_ACCOUNT = "AC" + "b2" * 16
AUTH_TOKEN = "f3c9a0d1e2b34c5d6e7f8091a2b3c4d5"
KEY_SID, KEY_SECRET = "SK" + "c3" * 16, "keysecretkeysecretkeysecret01234"
CONFIG = {"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN}
DATA = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 200


def ref(url: str, mime: str | None = "image/png") -> MediaRef:
    return MediaRef("sms", url, None, mime, None)


@pytest.fixture
def twilio(twilio_api: TwilioFake) -> TwilioFake:
    twilio_api.add_account(ACCOUNT, AUTH_TOKEN)
    twilio_api.add_account(OTHER_ACCOUNT, "other-token")
    twilio_api.add_api_key(KEY_SID, KEY_SECRET, ACCOUNT)
    return twilio_api


def media(twilio: TwilioFake, account: str = ACCOUNT, **body: object) -> str:
    return twilio.add_media(account, "MM" + "d4" * 16, "ME" + "e5" * 16, DATA, **body)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("status", [302, 307])
async def test_basic_auth_to_the_api_and_none_to_the_cdn(
    twilio: TwilioFake, provider_settings: dict[str, str], status: int
) -> None:
    twilio.redirect_status = status
    url = media(twilio, content_type="image/png")
    async with media_sources(provider_settings) as sources:
        download, body = await read_all(sources["sms"], ref(url, None), CONFIG)
    assert body == DATA
    assert download.content_type == "image/png"  # the CDN's, when the webhook gave none
    (api,) = twilio.api.calls("media")
    (cdn,) = twilio.cdn.calls("cdn")
    assert api.headers["authorization"] == basic(ACCOUNT, AUTH_TOKEN)
    assert "authorization" not in cdn.headers
    assert twilio.credential_leaks == 0


async def test_an_api_key_is_used_when_the_channel_has_one(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    url = media(twilio)
    config = CONFIG | {"api_key_sid": KEY_SID, "api_key_secret": KEY_SECRET}
    async with media_sources(provider_settings) as sources:
        _, body = await read_all(sources["sms"], ref(url), config)
    assert body == DATA
    assert twilio.api.calls("media")[0].headers["authorization"] == basic(KEY_SID, KEY_SECRET)


@pytest.mark.parametrize(
    "config",
    [
        CONFIG | {"auth_token": "wrong"},
        CONFIG | {"api_key_sid": KEY_SID, "api_key_secret": "wrong"},
    ],
    ids=["auth-token", "api-key"],
)
async def test_rejected_credentials_are_permanent_and_not_in_the_reason(
    twilio: TwilioFake, provider_settings: dict[str, str], config: dict[str, str]
) -> None:
    url = media(twilio)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent) as failure:
            await read_all(sources["sms"], ref(url), config)
    assert failure.value.reason == "twilio rejected the channel's credentials (401, code 20003)"
    assert "wrong" not in repr(failure.value)


async def test_a_key_of_another_account_is_refused_by_twilio(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    twilio.add_api_key("SK" + "f6" * 16, "secret-of-the-other-account", OTHER_ACCOUNT)
    url = media(twilio)
    config = CONFIG | {
        "api_key_sid": "SK" + "f6" * 16,
        "api_key_secret": "secret-of-the-other-account",
    }
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="code 20003"):
            await read_all(sources["sms"], ref(url), config)


async def test_the_early_404_is_transient_then_the_media_comes(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    twilio.propagation_s = 5.0
    url = media(twilio)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match="not available yet") as failure:
            await read_all(sources["sms"], ref(url), CONFIG)
        twilio.clock.advance(6)
        _, body = await read_all(sources["sms"], ref(url), CONFIG)
    assert failure.value.retry_after == 2.0
    assert body == DATA


async def test_429_is_transient_with_its_retry_after(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    busy = {"code": 20429, "message": "Too Many Requests", "status": 429}
    twilio.api.script("media", Scripted(429, json=busy, headers={"retry-after": "3"}))
    url = media(twilio)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient) as failure:
            await read_all(sources["sms"], ref(url), CONFIG)
    assert failure.value.retry_after == 3


async def test_a_5xx_from_the_cdn_is_transient_then_success(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    twilio.cdn.script("cdn", Scripted(503))
    url = media(twilio)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchTransient, match=r"\(503\)"):
            await read_all(sources["sms"], ref(url), CONFIG)
        _, body = await read_all(sources["sms"], ref(url), CONFIG)
    assert body == DATA


async def test_a_forged_media_url_inside_the_network_is_refused_without_a_request(
    twilio: TwilioFake, provider_settings: dict[str, str], internal_server: FakeServer
) -> None:
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/MM1/Media/ME1"
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match=r"host not allowed \(127\.0\.0\.2:"):
            await read_all(sources["sms"], ref(internal_server.url + path), CONFIG)
    assert internal_server.requests == []


async def test_a_forged_media_url_on_another_local_port_is_refused(
    twilio: TwilioFake, telegram_api: TelegramFake, provider_settings: dict[str, str]
) -> None:
    allowed = ",".join(server.host_port for server in twilio.servers)
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/MM1/Media/ME1"
    async with media_sources(provider_settings | {"media_allowed_hosts": allowed}) as sources:
        with pytest.raises(
            FetchPermanent, match=f"host not allowed \\(127.0.0.1:{telegram_api.server.port}\\)"
        ):
            await read_all(sources["sms"], ref(telegram_api.url + path), CONFIG)
    assert telegram_api.server.requests == []


async def test_a_redirect_to_a_host_not_allowed_is_refused(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    url = media(twilio)
    only_api = {"media_allowed_hosts": twilio.api.host_port}
    async with media_sources(provider_settings | only_api) as sources:
        with pytest.raises(FetchPermanent, match="host not allowed"):
            await read_all(sources["sms"], ref(url), CONFIG)
    assert len(twilio.api.calls("media")) == 1
    assert twilio.cdn.requests == []


async def test_a_media_url_of_another_account_gets_no_credentials(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    url = media(twilio, account=OTHER_ACCOUNT)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="another account"):
            await read_all(sources["sms"], ref(url), CONFIG)
    assert twilio.api.requests == []


async def test_missing_account_sid_names_the_key(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    url = media(twilio)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="no account_sid: run crm-ingest channel set"):
            await read_all(sources["sms"], ref(url), {"auth_token": AUTH_TOKEN})
    assert twilio.api.requests == []


async def test_too_big_by_content_length_and_while_streaming(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    declared = media(twilio)
    chunked = twilio.add_media(ACCOUNT, "MM2", "ME2", DATA, content_length=False, chunk_size=1000)
    received: list[bytes] = []
    async with media_sources(provider_settings, media_max_bytes=5000) as sources:
        with pytest.raises(FetchPermanent, match=f"too large \\({len(DATA)} bytes"):
            await read_all(sources["sms"], ref(declared), CONFIG)
        with pytest.raises(FetchPermanent, match="too large \\(over 5000 bytes"):
            await read_all(sources["sms"], ref(chunked), CONFIG, into=received)
    assert sum(map(len, received)) <= 5000


async def test_a_slow_cdn_times_out_as_transient(
    twilio: TwilioFake, provider_settings: dict[str, str]
) -> None:
    url = twilio.add_media(ACCOUNT, "MM3", "ME3", DATA, chunk_delay_s=1.5)
    async with media_sources(provider_settings, media_http_timeout_s=0.3) as sources:
        with pytest.raises(FetchTransient, match="timed out"):
            await read_all(sources["sms"], ref(url), CONFIG)


async def test_a_redirect_loop_ends(twilio: TwilioFake, provider_settings: dict[str, str]) -> None:
    url = media(twilio)
    twilio.api.script("media", *[Scripted(302, headers={"location": url})] * 10)
    async with media_sources(provider_settings) as sources:
        with pytest.raises(FetchPermanent, match="too many redirects"):
            await read_all(sources["sms"], ref(url), CONFIG)
    assert len(twilio.api.calls("media")) == 6


async def test_credentials_never_reach_a_reason_or_a_log_line(
    twilio: TwilioFake,
    provider_settings: dict[str, str],
    internal_server: FakeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = CONFIG | {"api_key_sid": KEY_SID, "api_key_secret": KEY_SECRET}
    reasons = []
    with structlog.testing.capture_logs() as lines:
        async with media_sources(provider_settings) as sources:
            await read_all(sources["sms"], ref(media(twilio)), config)
            for url in (media(twilio, account=OTHER_ACCOUNT), internal_server.url + "/x"):
                with pytest.raises(FetchPermanent) as failure:
                    await read_all(sources["sms"], ref(url), config)
                reasons.append(repr(failure.value))
    text = repr(lines) + caplog.text + "".join(reasons)
    assert lines
    for secret in (AUTH_TOKEN, KEY_SECRET, basic(KEY_SID, KEY_SECRET)):
        assert secret not in text
