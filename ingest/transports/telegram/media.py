"""Telegram media: `getFile` with the channel's `bot_token`, then the file link
(provider-apis.md §1.3).

The token is part of both URLs, so no URL is ever put in a reason or a log line. A file link
lives at least an hour; a 404 on it means it expired, and one fresh `getFile` follows at once.
Bots cannot download files over 20 MB: getFile says `file is too big`, which is final. The
webhook adapter records only the largest photo size, so the reference is the one to fetch.
"""

from __future__ import annotations

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
    with_fresh_link,
)

TOO_BIG = "too large: Telegram lets bots download files up to 20 MB"


def _retry_after(error: ErrorResponse) -> float | None:
    parameters = error.json().get("parameters")
    value = parameters.get("retry_after") if isinstance(parameters, dict) else None
    return float(value) if isinstance(value, int | float) else error.retry_after


def _classify_api(error: ErrorResponse) -> FetchError:
    """getFile's errors by status and description (provider-apis.md §1.2)."""
    description = str(error.json().get("description", ""))[:120]
    if error.status == 429:
        return FetchTransient(
            "telegram getFile: rate limited (429)", retry_after=_retry_after(error)
        )
    if error.status >= 500:
        return FetchTransient(f"telegram getFile: server error ({error.status})")
    if error.status in (401, 404):
        # The cloud server answers 401 for an unknown token and 404 for a malformed one.
        return FetchPermanent(f"telegram rejected the channel's bot_token ({error.status})")
    if "file is too big" in description:
        return FetchPermanent(TOO_BIG)
    if "temporarily unavailable" in description:
        return FetchTransient(f"telegram getFile: {description}")
    return FetchPermanent(f"telegram getFile refused ({error.status}): {description}")


def _classify_file(error: ErrorResponse) -> FetchError:
    """The file link, just issued by getFile: 404 is an expired link; 401s have been seen to
    come and go on file links (tdlib/telegram-bot-api #42, #779), so they are retried."""
    if error.status == 404:
        return LinkExpired("telegram file link expired")
    if error.status == 429:
        return FetchTransient("telegram file: rate limited (429)", retry_after=_retry_after(error))
    if error.status >= 500 or error.status == 401:
        return FetchTransient(f"telegram file: download failed ({error.status})")
    return FetchPermanent(f"telegram file: download refused ({error.status})")


class TelegramMediaSource:
    transport: ClassVar[Transport] = "telegram"

    def __init__(self, settings: Settings, downloader: SafeDownloader) -> None:
        self._api = settings.telegram_api_url
        self._downloader = downloader

    @asynccontextmanager
    async def open(self, ref: MediaRef, config: Mapping[str, Any]) -> AsyncIterator[MediaDownload]:
        token = require_key(config, "bot_token")
        file_id = strip_prefix(ref)

        async def open_link() -> AbstractAsyncContextManager[HttpDownload]:
            path, size = await self._get_file(token, file_id)
            return self._downloader.download(
                f"{self._api}/file/bot{token}/{quote(path, safe='/')}",
                what="telegram file",
                classify=_classify_file,
                content_type=ref.declared_mimetype,
                declared_size=size,
            )

        async with with_fresh_link(open_link) as download:
            yield download

    async def _get_file(self, token: str, file_id: str) -> tuple[str, int | None]:
        answer = await self._downloader.get_json(
            f"{self._api}/bot{token}/getFile?file_id={quote(file_id, safe='')}",
            what="telegram getFile",
            classify=_classify_api,
        )
        result = answer.get("result")
        if answer.get("ok") is not True or not isinstance(result, dict):
            raise FetchTransient("telegram getFile: unexpected answer")
        size = result.get("file_size")
        size = size if isinstance(size, int) and size >= 0 else None
        path = result.get("file_path")
        if not isinstance(path, str) or not path:
            # Only files up to 20 MB get a path (tdlib `JsonFile::store`).
            raise FetchPermanent(TOO_BIG)
        if path.startswith("/") or ".." in path.split("/"):
            raise FetchPermanent("telegram getFile: a local file_path (local Bot API server mode)")
        return path, size
