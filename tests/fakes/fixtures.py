"""Pytest fixtures of the provider fakes, registered for the whole suite in tests/conftest.py.

The servers start once per session; each test gets them reset (no tokens, files, scripts or
recorded requests left from another test). `fake_provider_settings` points crm-ingest at them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import structlog

from ingest.config import Transport, load_settings
from ingest.objectstore import ObjectStore, open_store
from ingest.transports.fetching import MediaDownload, MediaRef, MediaSource, load_media_sources
from ingest.transports.http_download import media_http_client
from ingest.transports.sending import MessageSender, OutboundAttachment, load_senders
from tests.fakes.harness import FakeServer
from tests.fakes.smtp import (  # noqa: F401 (fixtures, registered here)
    _smtp_fake,
    _smtp_tls_fakes,
    smtp_server,
    smtp_tls_servers,
    tls_certificate,
)
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake


@contextmanager
def serving(*servers: FakeServer) -> Iterator[None]:
    for server in servers:
        server.start()
    try:
        yield
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def _telegram_fake() -> Iterator[TelegramFake]:
    fake = TelegramFake()
    with serving(fake.server):
        yield fake


@pytest.fixture(scope="session")
def _whatsapp_fake() -> Iterator[WhatsAppFake]:
    fake = WhatsAppFake()
    with serving(*fake.servers):
        yield fake


@pytest.fixture(scope="session")
def _twilio_fake() -> Iterator[TwilioFake]:
    fake = TwilioFake()
    with serving(*fake.servers):
        yield fake


@pytest.fixture(scope="session")
def _internal_server() -> Iterator[FakeServer]:
    # 127.0.0.2 is loopback too: a forged URL pointing here must be refused before any request.
    server = FakeServer("internal", host="127.0.0.2")
    with serving(server):
        yield server


@pytest.fixture
def telegram_api(_telegram_fake: TelegramFake) -> TelegramFake:
    _telegram_fake.reset()
    return _telegram_fake


@pytest.fixture
def whatsapp_api(_whatsapp_fake: WhatsAppFake) -> WhatsAppFake:
    _whatsapp_fake.reset()
    return _whatsapp_fake


@pytest.fixture
def twilio_api(_twilio_fake: TwilioFake) -> TwilioFake:
    _twilio_fake.reset()
    return _twilio_fake


@pytest.fixture
def internal_server(_internal_server: FakeServer) -> FakeServer:
    """An origin that is not in the allowed hosts: it must never receive a request."""
    _internal_server.reset()
    return _internal_server


def fake_provider_settings(
    telegram: TelegramFake, whatsapp: WhatsAppFake, twilio: TwilioFake
) -> dict[str, str]:
    """Settings overrides (field names) that send every provider call to the fakes and allow
    exactly their origins."""
    servers = (telegram.server, *whatsapp.servers, *twilio.servers)
    return {
        "telegram_api_url": telegram.url,
        "whatsapp_graph_url": whatsapp.graph_url,
        "twilio_api_url": twilio.api.url,
        "media_allowed_hosts": ",".join(server.host_port for server in servers),
    }


def as_env(overrides: dict[str, str]) -> dict[str, str]:
    """Settings overrides as the environment of a `crm-ingest` process."""
    return {f"CRM_INGEST_{name.upper()}": value for name, value in overrides.items()}


@pytest.fixture
def provider_settings(
    telegram_api: TelegramFake, whatsapp_api: WhatsAppFake, twilio_api: TwilioFake
) -> dict[str, str]:
    return fake_provider_settings(telegram_api, whatsapp_api, twilio_api)


@asynccontextmanager
async def media_sources(
    overrides: dict[str, Any], **settings: Any
) -> AsyncIterator[dict[Transport, MediaSource]]:
    """The product's media sources, configured for the fakes, on a client of their own."""
    async with media_http_client() as client:
        yield load_media_sources(load_settings(**overrides, **settings), client)


async def read_all(
    source: MediaSource, ref: MediaRef, config: dict[str, Any], into: list[bytes] | None = None
) -> tuple[MediaDownload, bytes]:
    """Opens and reads one download to its end, as the worker would; `into` keeps the chunks
    received before a failure."""
    chunks = [] if into is None else into
    async with source.open(ref, config) as download:
        async for chunk in download.chunks():
            chunks.append(chunk)
    return download, b"".join(chunks)


@asynccontextmanager
async def senders(
    overrides: dict[str, Any], store: ObjectStore, **settings: Any
) -> AsyncIterator[dict[Transport, MessageSender]]:
    """The product's senders, configured for the fakes, on a client of their own."""
    async with media_http_client() as client:
        yield load_senders(load_settings(**overrides, **settings), client, store)


@pytest.fixture
async def file_store(tmp_path: Any) -> AsyncIterator[ObjectStore]:
    """A real object store in a directory of the test's own."""
    media = tmp_path / "media"
    media.mkdir()
    store = open_store(f"file://{media}")
    yield store
    await store.close()


async def stored_attachment(
    store: ObjectStore, upload_id: int, data: bytes, name: str | None, mimetype: str | None
) -> OutboundAttachment:
    """Bytes put in the store as an upload would be, described as the dispatcher does."""
    stored = await store.put_bytes(f"uploads/{upload_id}", data, mimetype)
    return OutboundAttachment(upload_id, stored.url, name, mimetype, stored.size)


@contextmanager
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Every log line of the block as text, structlog's and the stdlib's (httpx, aiosmtplib),
    filled in when the block ends."""
    caplog.set_level(logging.DEBUG)
    lines: list[str] = []
    with structlog.testing.capture_logs() as captured:
        yield lines
    lines.extend(repr(line) for line in captured)
    lines.append(caplog.text)
