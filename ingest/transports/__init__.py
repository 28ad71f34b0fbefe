"""Transport adapters, one module per provider; `ADAPTERS` maps a transport name to its adapter."""

from __future__ import annotations

from ingest.config import Transport
from ingest.transports.base import TransportAdapter


def load_adapters() -> dict[Transport, TransportAdapter]:
    from ingest.transports.telegram import TelegramAdapter

    adapters: list[TransportAdapter] = [TelegramAdapter()]
    return {adapter.transport: adapter for adapter in adapters}
