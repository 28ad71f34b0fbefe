"""Telegram Bot API: all that speaks its language (webhooks, media download, sending)."""

from ingest.transports.telegram.webhook import (
    SECRET_HEADER,
    TelegramAdapter,
)

__all__ = ["SECRET_HEADER", "TelegramAdapter"]
