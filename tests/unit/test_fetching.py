"""The provider-neutral parts of media fetching: which URLs are allowed, checksum spellings,
Retry-After, and the settings that configure them."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from ingest.config import SettingsError, load_settings
from ingest.transports.fetching import (
    FetchPermanent,
    MediaRef,
    load_media_sources,
    require_key,
    strip_prefix,
)
from ingest.transports.http_download import (
    AllowedHosts,
    normalize_sha256,
    retry_after_seconds,
)

DEFAULTS = AllowedHosts(load_settings().media_allowed_hosts)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.telegram.org/file/bot1:x/documents/file_1.pdf",
        "https://graph.facebook.com/v25.0/1037543291543636",
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1",
        "https://scontent.xx.fbcdn.net/v/t1/abc",
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://mms.twiliocdn.com/AC1/abc",
        "https://API.TWILIO.COM:443/x",
    ],
)
def test_the_providers_documented_hosts_are_allowed_by_default(url: str) -> None:
    assert DEFAULTS.allows(httpx.URL(url))


@pytest.mark.parametrize(
    "url",
    [
        "http://api.telegram.org/x",  # a host without a port means https only
        "https://api.telegram.org:8443/x",
        "https://api.telegram.org.evil.example/x",
        "https://evilfbcdn.net/x",  # *.fbcdn.net is subdomains, not a suffix of any name
        "https://user:pass@api.twilio.com/x",  # credentials in the URL
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data",
        "ftp://api.twilio.com/x",
        "file:///etc/passwd",
    ],
)
def test_anything_else_is_refused_by_default(url: str) -> None:
    assert not DEFAULTS.allows(httpx.URL(url))


def test_host_port_entries_allow_plain_http_on_exactly_that_port() -> None:
    allowed = AllowedHosts("127.0.0.1:8081,[::1]:9000")
    assert allowed.allows(httpx.URL("http://127.0.0.1:8081/bot1:x/getFile"))
    assert allowed.allows(httpx.URL("https://127.0.0.1:8081/"))
    assert allowed.allows(httpx.URL("http://[::1]:9000/"))
    assert not allowed.allows(httpx.URL("http://127.0.0.1:8082/"))
    assert not allowed.allows(httpx.URL("http://127.0.0.2:8081/"))


def test_a_bad_allowed_hosts_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CRM_INGEST_MEDIA_ALLOWED_HOSTS"):
        load_settings(media_allowed_hosts="https://api.telegram.org/")


def test_settings_normalise_hosts_and_base_urls() -> None:
    settings = load_settings(
        media_allowed_hosts=" API.Example.com , ,127.0.0.1:80 ",
        telegram_api_url="http://127.0.0.1:8081/",
    )
    assert settings.media_allowed_hosts == "api.example.com,127.0.0.1:80"
    assert settings.telegram_api_url == "http://127.0.0.1:8081"


def test_sha256_in_hex_or_base64_becomes_lower_case_hex() -> None:
    digest = hashlib.sha256(b"media")
    assert normalize_sha256(digest.hexdigest().upper()) == digest.hexdigest()
    encoded = base64.b64encode(digest.digest()).decode()
    assert normalize_sha256(encoded) == digest.hexdigest()
    assert normalize_sha256(encoded.rstrip("=")) == digest.hexdigest()
    assert normalize_sha256(" " + encoded + "\n") == digest.hexdigest()


@pytest.mark.parametrize("value", [None, "", "abc", "zz" * 32, base64.b64encode(b"short").decode()])
def test_what_is_no_sha256_is_no_checksum(value: str | None) -> None:
    assert normalize_sha256(value) is None


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds("1.5") == 1.5
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 110 < (retry_after_seconds(later) or 0) <= 120
    assert retry_after_seconds("-3") == 0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_a_missing_or_empty_key_says_how_to_set_it() -> None:
    assert require_key({"bot_token": "1:x"}, "bot_token") == "1:x"
    for config in ({}, {"bot_token": ""}, {"bot_token": 5}):
        with pytest.raises(FetchPermanent) as failure:
            require_key(config, "bot_token")
        assert failure.value.reason == (
            "channel has no bot_token: run crm-ingest channel set <channel id> --config bot_token=…"
        )


def test_references_lose_only_their_own_transport_prefix() -> None:
    assert strip_prefix(MediaRef("telegram", "telegram:AgAC:x")) == "AgAC:x"
    assert strip_prefix(MediaRef("whatsapp", "whatsapp:123")) == "123"
    assert strip_prefix(MediaRef("whatsapp", "123")) == "123"


async def test_every_provider_with_hosted_media_has_one_source() -> None:
    async with httpx.AsyncClient() as client:
        sources = load_media_sources(load_settings(), client)
    assert {t: s.transport for t, s in sources.items()} == {
        "telegram": "telegram",
        "whatsapp": "whatsapp",
        "sms": "sms",
    }  # email's bytes come inside the webhook
