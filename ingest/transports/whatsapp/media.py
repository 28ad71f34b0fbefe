"""WhatsApp Cloud API media: `GET /<media id>` with the channel's `access_token` gives a
5-minute URL on Meta's media host, fetched with the same Bearer token (provider-apis.md §2.2).

Errors are read by Graph error code, not HTTP status (Meta's advice, §2.1). A media URL that
404s has expired: one fresh lookup follows at once. Meta's `sha256` (hex here, base64 in
webhooks) and `file_size` (a string) are checked against the bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar
from urllib.parse import quote

from ingest.config import Settings, Transport
from ingest.transports.fetching import (
    FetchError,
    FetchPermanent,
    FetchTransient,
    MediaDownload,
    MediaRef,
    require_key,
    strip_prefix,
)
from ingest.transports.http_download import (
    ErrorResponse,
    HttpDownload,
    LinkExpired,
    SafeDownloader,
    classify_http,
    normalize_sha256,
    with_fresh_link,
)

MEDIA_ID = re.compile(r"[0-9A-Za-z_.-]{1,512}")
RATE_LIMITS = frozenset({4, 80007, 130429})
UNAVAILABLE = frozenset({1, 2, 131000, 131016, 131057})
CREDENTIALS = frozenset({0, 190})


def _classify_graph(error: ErrorResponse) -> FetchError:
    """The media lookup's errors, by Graph error code (provider-apis.md §2.1, §2.4)."""
    body = error.json().get("error")
    code = body.get("code") if isinstance(body, dict) else None
    if code == 100:
        # Unknown, expired (webhook media ids live 7 days) or another number's media.
        return FetchPermanent("whatsapp media expired or unknown (code 100)")
    if code in CREDENTIALS:
        return FetchPermanent(f"whatsapp rejected the channel's access_token (code {code})")
    if code in RATE_LIMITS:
        return FetchTransient(
            f"whatsapp: rate limited (code {code})", retry_after=error.retry_after
        )
    if code in UNAVAILABLE:
        return FetchTransient(f"whatsapp: service unavailable (code {code})")
    if isinstance(code, int) and (code in (3, 10) or 200 <= code <= 299):
        return FetchPermanent(f"whatsapp: access_token lacks permission (code {code})")
    if isinstance(code, int) and error.status < 500:
        return FetchPermanent(f"whatsapp media lookup refused (code {code})")
    return classify_http("whatsapp media lookup")(error)


def _classify_download(error: ErrorResponse) -> FetchError:
    """Meta's media host: 404 is an expired URL ("try to get a new media URL")."""
    if error.status == 404:
        return LinkExpired("whatsapp media URL expired")
    if error.status in (401, 403):
        return FetchPermanent(f"whatsapp media host rejected the access_token ({error.status})")
    return classify_http("whatsapp media download")(error)


class WhatsAppMediaSource:
    transport: ClassVar[Transport] = "whatsapp"

    def __init__(self, settings: Settings, downloader: SafeDownloader) -> None:
        self._graph = settings.whatsapp_graph_url
        self._downloader = downloader

    @asynccontextmanager
    async def open(self, ref: MediaRef, config: Mapping[str, Any]) -> AsyncIterator[MediaDownload]:
        auth = {"authorization": f"Bearer {require_key(config, 'access_token')}"}
        media_id = strip_prefix(ref)
        if not MEDIA_ID.fullmatch(media_id):
            raise FetchPermanent("whatsapp: not a media id")
        lookup = f"{self._graph}/{media_id}"
        if number := config.get("phone_number_id"):
            lookup += f"?phone_number_id={quote(str(number), safe='')}"

        async def open_link() -> AbstractAsyncContextManager[HttpDownload]:
            info = await self._downloader.get_json(
                lookup, what="whatsapp media lookup", classify=_classify_graph, headers=auth
            )
            url = info.get("url")
            if not isinstance(url, str) or not url:
                raise FetchTransient("whatsapp media lookup: no url in the answer")
            size = _size(info.get("file_size"))
            mime = info.get("mime_type")
            return self._downloader.download(
                url,
                what="whatsapp media download",
                classify=_classify_download,
                headers=auth,
                content_type=mime if isinstance(mime, str) else ref.declared_mimetype,
                declared_size=size,
                expected_size=size,
                expected_sha256=normalize_sha256(info.get("sha256"))
                or normalize_sha256(ref.declared_sha256),
            )

        async with with_fresh_link(open_link) as download:
            yield download


def _size(value: Any) -> int | None:
    """`file_size` is a string in Meta's answers and an integer in some clients' docs."""
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
