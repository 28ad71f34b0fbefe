"""Media fetching, provider-neutral: what the fetch job knows, what a provider source returns,
and the one error tree every source raises.

The core (the fetch worker) depends on this module only, never on a provider package. Each
provider implements `MediaSource` in `ingest/transports/<provider>/media.py`; all of them
download through `ingest.transports.http_download.SafeDownloader`, so the allowed-hosts check,
the credential-dropping redirects, the size caps and the translation of httpx errors exist
exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ingest.config import Transport

if TYPE_CHECKING:
    import httpx

    from ingest.config import Settings


@dataclass(frozen=True, slots=True)
class MediaRef:
    """What the fetch job knows about one attachment."""

    transport: Transport
    # core_uploads.path as the webhook left it: "telegram:<file_id>", "whatsapp:<media id>",
    # or a Twilio MediaUrl.
    reference: str
    declared_size: int | None = None  # from the webhook, if any
    declared_mimetype: str | None = None
    declared_sha256: str | None = None  # WhatsApp gives one, base64 or hex


class MediaDownload(Protocol):
    """An open response body. `declared_size` was already checked against the byte cap."""

    @property
    def content_type(self) -> str | None: ...

    @property
    def declared_size(self) -> int | None: ...  # Content-Length or provider metadata

    @property
    def expected_sha256(self) -> str | None: ...  # lower-case hex; compare after streaming

    def chunks(self) -> AsyncIterator[bytes]: ...


class MediaSource(Protocol):
    """Downloads one provider's media; `config` is the channel's decrypted config."""

    transport: ClassVar[Transport]

    def open(
        self, ref: MediaRef, config: Mapping[str, Any]
    ) -> AbstractAsyncContextManager[MediaDownload]: ...


class FetchError(Exception):
    """A download failed. `reason` is short and never holds a token or a URL carrying one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchTransient(FetchError):
    """Worth retrying: timeouts, 5xx, 429, Twilio's early 404, an expired Telegram link."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class FetchPermanent(FetchError):
    """Retrying cannot help until something changes: credentials rejected or missing, too big,
    expired, host not allowed, checksum mismatch."""


def require_key(config: Mapping[str, Any], key: str) -> str:
    """A credential from the channel's config, or a permanent failure saying how to set it."""
    value = config.get(key)
    if isinstance(value, str) and value:
        return value
    raise FetchPermanent(
        f"channel has no {key}: run crm-ingest channel set <channel id> --config {key}=…"
    )


def strip_prefix(ref: MediaRef) -> str:
    """The provider's id from a `<transport>:<id>` reference."""
    return ref.reference.removeprefix(f"{ref.transport}:")


def load_media_sources(
    settings: Settings, client: httpx.AsyncClient
) -> dict[Transport, MediaSource]:
    """One source per transport whose media is fetched from a provider (email carries its
    bytes in the webhook, so it has none). `client` is shared and owned by the caller."""
    from ingest.transports.http_download import safe_downloader
    from ingest.transports.sms.media import TwilioMediaSource
    from ingest.transports.telegram.media import TelegramMediaSource
    from ingest.transports.whatsapp.media import WhatsAppMediaSource

    downloader = safe_downloader(settings, client)
    sources: list[MediaSource] = [
        TelegramMediaSource(settings, downloader),
        WhatsAppMediaSource(settings, downloader),
        TwilioMediaSource(settings, downloader),
    ]
    return {source.transport: source for source in sources}
