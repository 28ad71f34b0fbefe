"""Telegram channel keys."""

from ingest.transports.channel_keys import ConfigKey, pattern

CONFIG_KEYS = (
    ConfigKey(
        "secret_token",
        pattern(r"[A-Za-z0-9_-]{1,256}", "must be 1-256 chars of A-Za-z0-9_-"),
        secret=True,
        generated=True,
        rotation="Telegram sends it with every update: call setWebhook again with the new value",
    ),
    ConfigKey(
        "bot_token",
        pattern(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,100}", "must look like 123456:ABC-DEF… (BotFather)"),
        secret=True,
        rotation="revoke it with @BotFather (/revoke), then set the new one",
    ),
)
