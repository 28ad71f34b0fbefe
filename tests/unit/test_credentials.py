"""Channel secrets at rest: sealed per channel and key name, refused when altered, masked when
printed, opened by any configured key while rotating."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ingest.config import SettingsError, load_settings
from ingest.credentials import (
    PREFIX,
    Keyring,
    SealedSecretError,
    SecretsKeyError,
    generate_key,
    keep_previous,
    masked_config,
    open_config,
    seal_config,
)
from ingest.transports.base import Channel

CHANNEL = uuid.UUID("0b6f2d4e-8a1c-4c3e-9f7a-2d5e6f708192")
BOT_TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"


def test_sealed_config_hides_secrets_and_keeps_the_rest_readable() -> None:
    keys = Keyring.parse(generate_key())
    config = {"secret_token": "tg-secret-value", "bot_token": BOT_TOKEN}
    stored = seal_config(keys, "telegram", CHANNEL, config)
    assert all(value.startswith(PREFIX) for value in stored.values())
    assert "tg-secret-value" not in str(stored)
    assert BOT_TOKEN not in str(stored)
    whatsapp = seal_config(
        keys, "whatsapp", CHANNEL, {"app_secret": "s" * 20, "phone_number_id": "1"}
    )
    assert whatsapp["phone_number_id"] == "1"  # not a secret: stays readable
    assert open_config(keys, "telegram", CHANNEL, stored).config == config


def test_each_seal_is_fresh() -> None:
    keys = Keyring.parse(generate_key())
    assert keys.seal(CHANNEL, "token", "x") != keys.seal(CHANNEL, "token", "x")


def test_a_wrong_key_names_the_setting() -> None:
    stored = seal_config(Keyring.parse(generate_key()), "telegram", CHANNEL, {"secret_token": "a"})
    with pytest.raises(SecretsKeyError, match="CRM_INGEST_SECRETS_KEY"):
        open_config(Keyring.parse(generate_key()), "telegram", CHANNEL, stored)


def test_every_configured_key_opens_and_the_first_seals() -> None:
    old, new = generate_key(), generate_key()
    stored = seal_config(Keyring.parse(old), "telegram", CHANNEL, {"secret_token": "a"})
    both = Keyring.parse(f"{new},{old}")
    assert open_config(both, "telegram", CHANNEL, stored).config == {"secret_token": "a"}
    assert not both.is_current(stored["secret_token"])
    assert both.is_current(both.seal(CHANNEL, "secret_token", "a"))


@pytest.mark.parametrize("raw", ["", "   ", "c2hvcnQ=", f"{generate_key()},nope"])
def test_malformed_keys_are_refused(raw: str) -> None:
    with pytest.raises(SecretsKeyError, match="CRM_INGEST_SECRETS_KEY"):
        Keyring.parse(raw)


def test_a_malformed_key_stops_settings_with_one_line() -> None:
    with pytest.raises(SettingsError, match=r"^invalid setting CRM_INGEST_SECRETS_KEY: .*32 bytes"):
        load_settings(secrets_key="not-a-key")


def test_tampering_is_refused() -> None:
    keys = Keyring.parse(generate_key())
    sealed = keys.seal(CHANNEL, "secret_token", "a")
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for stored in (flipped, "a", keys.seal(uuid.uuid4(), "secret_token", "a")):
        with pytest.raises(SealedSecretError):
            open_config(keys, "telegram", CHANNEL, {"secret_token": stored})


def test_masking_shows_the_last_four_characters_only() -> None:
    config = {"secret_token": "generated-secret-1234", "bot_token": BOT_TOKEN}
    masked = masked_config("telegram", config, shown=["secret_token"])
    assert masked == {"secret_token": "generated-secret-1234", "bot_token": "…ew11"}
    short = masked_config("whatsapp", {"app_secret": "short", "phone_number_id": "12345"})
    assert short == {"app_secret": "…", "phone_number_id": "12345"}


def test_a_replaced_secret_is_accepted_until_its_grace_ends() -> None:
    now = datetime.now(UTC)
    previous = keep_previous({"token": "old"}, {"token": "new"}, ["token"], timedelta(hours=1), now)
    assert previous == {"token": ("old", now + timedelta(hours=1))}
    channel = Channel(CHANNEL, CHANNEL, "email", {"token": "new"}, previous=previous)
    assert channel.secrets("token") == ("new", "old")
    expired = {"token": ("old", now - timedelta(seconds=1))}
    assert Channel(CHANNEL, CHANNEL, "email", {"token": "new"}, previous=expired).secrets(
        "token"
    ) == ("new",)
    assert Channel(CHANNEL, CHANNEL, "email", {}).secrets("token") == ()
