"""Every adapter's channel_config (what `channel add --config` generates, keeps and refuses) and
the transport name it registers under."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.config import Transport
from ingest.errors import ChannelConfigError
from ingest.transports.base import TransportAdapter
from ingest.transports.email import EmailAdapter
from ingest.transports.sms import TwilioSmsAdapter
from ingest.transports.telegram import TelegramAdapter
from ingest.transports.whatsapp import WhatsAppAdapter
from tests.unit.test_email import SIGNING_KEY
from tests.unit.test_email import TOKEN as EMAIL_TOKEN
from tests.unit.test_sms import TOKEN as AUTH_TOKEN
from tests.unit.test_whatsapp import APP_SECRET

ADAPTERS: dict[Transport, TransportAdapter] = {
    "telegram": TelegramAdapter(),
    "whatsapp": WhatsAppAdapter(),
    "sms": TwilioSmsAdapter(default_region="US"),
    "email": EmailAdapter(),
}
PUBLIC_URL = "https://public.example.com/sms"
BOUND_WHATSAPP = {"verify_token": "my-token!", "phone_number_id": "1065403"}  # + an app_secret


@pytest.mark.parametrize("transport", sorted(ADAPTERS))
def test_transport_name(transport: Transport) -> None:
    assert type(ADAPTERS[transport]).transport == transport


@pytest.mark.parametrize(
    ("transport", "given", "generated"),
    [
        ("telegram", {}, "secret_token"),
        ("whatsapp", {"app_secret": APP_SECRET}, "verify_token"),
        ("email", {}, "token"),
        ("email", {"signing_key": SIGNING_KEY}, "token"),
    ],
)
def test_channel_config_generates_a_missing_secret(
    transport: Transport, given: dict[str, str], generated: str
) -> None:
    adapter = ADAPTERS[transport]
    first, second = adapter.channel_config(given), adapter.channel_config(given)
    assert set(first) == {generated, *given}
    assert {key: first[key] for key in given} == given
    assert first[generated] != second[generated]
    assert adapter.channel_config(first) == first  # a generated secret is itself valid


@pytest.mark.parametrize(
    ("transport", "given"),
    [
        ("telegram", {"secret_token": "a"}),
        ("telegram", {"secret_token": "A-z_0-9"}),
        ("telegram", {"secret_token": "x" * 256}),
        ("whatsapp", {**BOUND_WHATSAPP, "app_secret": APP_SECRET}),
        ("sms", {"auth_token": AUTH_TOKEN}),
        ("sms", {"auth_token": AUTH_TOKEN, "public_url": PUBLIC_URL}),
        ("email", {"token": EMAIL_TOKEN, "signing_key": SIGNING_KEY}),
    ],
)
def test_channel_config_keeps_given_values(transport: Transport, given: dict[str, str]) -> None:
    assert ADAPTERS[transport].channel_config(given) == given


@pytest.mark.parametrize(
    ("transport", "given", "match"),
    [
        ("telegram", {"secret_token": ""}, "secret_token"),
        ("telegram", {"secret_token": "x" * 257}, "secret_token"),
        ("telegram", {"secret_token": "has space"}, "secret_token"),
        ("telegram", {"secret_token": "slash/"}, "secret_token"),
        ("telegram", {"secret_token": "ümlaut"}, "secret_token"),
        ("telegram", {"secret_token": "abc\n"}, "secret_token"),
        ("whatsapp", {}, "app_secret is required"),
        ("whatsapp", {"app_secret": ""}, "app_secret is required"),
        ("whatsapp", {"verify_token": "abc"}, "app_secret is required"),
        ("whatsapp", {"app_secret": "has space"}, "app_secret"),
        ("whatsapp", {"app_secret": APP_SECRET, "verify_token": ""}, "verify_token"),
        ("whatsapp", {"app_secret": APP_SECRET, "verify_token": "x" * 257}, "verify_token"),
        ("whatsapp", {"app_secret": APP_SECRET, "verify_token": "ümlaut"}, "verify_token"),
        ("whatsapp", {"app_secret": APP_SECRET, "phone_number_id": "+1065"}, "phone_number_id"),
        ("whatsapp", {"app_secret": APP_SECRET, "phone_number_id": ""}, "phone_number_id"),
        ("whatsapp", {"app_secret": APP_SECRET, "phone_number_id": "١٢٣"}, "phone_number_id"),
        ("sms", {}, "auth_token"),
        ("sms", {"auth_token": ""}, "auth_token"),
        ("sms", {"auth_token": " padded "}, "auth_token"),
        ("sms", {"auth_token": AUTH_TOKEN, "public_url": "ftp://x/"}, "public_url"),
        ("sms", {"auth_token": AUTH_TOKEN, "public_url": "crm.example.com/sms"}, "public_url"),
        ("sms", {"auth_token": AUTH_TOKEN, "public_url": "https://"}, "public_url"),
        ("email", {"token": ""}, "token"),
        ("email", {"token": "has space"}, "token"),
        ("email", {"signing_key": ""}, "signing_key"),
        ("email", {"signing_key": " key"}, "signing_key"),
    ],
)
def test_channel_config_rejects(transport: Transport, given: dict[str, Any], match: str) -> None:
    with pytest.raises(ChannelConfigError, match=match):
        ADAPTERS[transport].channel_config(given)


@pytest.mark.parametrize(
    ("transport", "given", "unknown"),
    [
        ("telegram", {"secret_token": "abc", "bot_tokn": "123:abc"}, "bot_tokn"),
        ("whatsapp", {"app_secret": APP_SECRET, "accesstoken": "x"}, "accesstoken"),
        ("sms", {"auth_token": AUTH_TOKEN, "account": "AC1"}, "account"),
        ("email", {"provider": "mailgun"}, "provider"),
    ],
)
def test_channel_config_rejects_unknown_keys(
    transport: Transport, given: dict[str, str], unknown: str
) -> None:
    with pytest.raises(ChannelConfigError, match=f"unknown config key for {transport}: {unknown}"):
        ADAPTERS[transport].channel_config(given)


BOT_TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("transport", "given"),
    [
        ("telegram", {"secret_token": "abc", "bot_token": BOT_TOKEN}),
        ("whatsapp", {**BOUND_WHATSAPP, "app_secret": APP_SECRET, "access_token": "EAAG.x"}),
        (
            "sms",
            {"auth_token": AUTH_TOKEN, "account_sid": ACCOUNT_SID, "from": "+15551234567"},
        ),
        (
            "email",
            {
                "token": EMAIL_TOKEN,
                "smtp_url": "smtps://crm:pa%40ss@smtp.example.com:465",
                "from_address": "crm@example.com",
            },
        ),
    ],
)
def test_channel_config_keeps_credentials_for_media_and_replies(
    transport: Transport, given: dict[str, str]
) -> None:
    assert ADAPTERS[transport].channel_config(given) == given


@pytest.mark.parametrize(
    ("transport", "given", "match"),
    [
        ("telegram", {"bot_token": "not-a-token"}, "telegram bot_token must look like"),
        ("sms", {"auth_token": AUTH_TOKEN, "account_sid": "AC1"}, "account_sid must be AC"),
        ("email", {"smtp_url": "http://smtp.example.com"}, "smtp_url must be smtp://"),
        ("email", {"from_address": "nobody"}, "from_address must be an address"),
    ],
)
def test_channel_config_rejects_bad_credentials_without_echoing_them(
    transport: Transport, given: dict[str, str], match: str
) -> None:
    with pytest.raises(ChannelConfigError, match=match) as caught:
        ADAPTERS[transport].channel_config(given)
    assert all(value not in str(caught.value) for value in given.values())


def test_channel_config_applies_changes_to_the_current_config() -> None:
    current = ADAPTERS["telegram"].channel_config({})
    changed = ADAPTERS["telegram"].channel_config({"bot_token": BOT_TOKEN}, current)
    assert changed == {**current, "bot_token": BOT_TOKEN}
