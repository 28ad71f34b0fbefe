"""Provider adapters, one package per provider; `load_adapters` maps a transport to its adapter."""

from __future__ import annotations

from ingest.config import Transport
from ingest.transports.base import TransportAdapter
from ingest.transports.channel_keys import ConfigKey


def load_adapters(default_region: str | None = None) -> dict[Transport, TransportAdapter]:
    """`default_region` (ISO 3166 alpha-2) reads phone numbers written without a country code."""
    from ingest.transports.email import EmailAdapter
    from ingest.transports.sms import TwilioSmsAdapter
    from ingest.transports.telegram import TelegramAdapter
    from ingest.transports.whatsapp import WhatsAppAdapter

    adapters: list[TransportAdapter] = [
        TelegramAdapter(),
        WhatsAppAdapter(default_region),
        TwilioSmsAdapter(default_region),
        EmailAdapter(default_region),
    ]
    return {adapter.transport: adapter for adapter in adapters}


def config_keys(transport: Transport) -> tuple[ConfigKey, ...]:
    """The channel config keys `transport` knows, with which of them are secrets."""
    from ingest.transports.email.keys import CONFIG_KEYS as EMAIL
    from ingest.transports.sms.keys import CONFIG_KEYS as SMS
    from ingest.transports.telegram.keys import CONFIG_KEYS as TELEGRAM
    from ingest.transports.whatsapp.keys import CONFIG_KEYS as WHATSAPP

    return {"telegram": TELEGRAM, "whatsapp": WHATSAPP, "sms": SMS, "email": EMAIL}[transport]
